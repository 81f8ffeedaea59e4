//! sandrun's names for files: its file type (`text`, `data`, `code`, ...), MIME type and
//! human-readable size, from a file name's extension, as its `/outputs` listing and `/download`
//! show them. Shared by the coordinator's sandrun-compatible views and the development worker.

/// The lowercase extension of a name, dot included (`""` when it has none).
fn extension(name: &str) -> String {
    name.rfind('.')
        .map(|dot| name[dot..].to_ascii_lowercase())
        .unwrap_or_default()
}

/// sandrun's file type name for a file name, from its extension.
pub fn file_type(name: &str) -> &'static str {
    match extension(name).as_str() {
        ".png" | ".jpg" | ".jpeg" | ".gif" | ".bmp" | ".webp" | ".svg" | ".tiff" | ".ico" => {
            "image"
        }
        ".pt" | ".pth" | ".safetensors" | ".onnx" | ".h5" | ".pb" | ".ckpt" | ".pkl"
        | ".joblib" => "model",
        ".mp4" | ".avi" | ".mov" | ".mkv" | ".webm" | ".flv" | ".wmv" => "video",
        ".mp3" | ".wav" | ".flac" | ".ogg" | ".m4a" | ".aac" => "audio",
        ".csv" | ".json" | ".parquet" | ".npy" | ".npz" | ".hdf5" | ".feather" | ".arrow" => "data",
        ".txt" | ".log" | ".md" | ".rst" => "text",
        ".zip" | ".tar" | ".gz" | ".tgz" | ".bz2" | ".7z" => "archive",
        ".py" | ".cpp" | ".c" | ".h" | ".hpp" | ".js" | ".ts" | ".rs" | ".go" | ".java" | ".sh" => {
            "code"
        }
        ".pdf" | ".docx" | ".xlsx" | ".pptx" => "document",
        _ => "other",
    }
}

/// sandrun's MIME type for a file name, from its extension.
pub fn mime_type(name: &str) -> &'static str {
    match extension(name).as_str() {
        ".png" => "image/png",
        ".jpg" | ".jpeg" => "image/jpeg",
        ".gif" => "image/gif",
        ".bmp" => "image/bmp",
        ".webp" => "image/webp",
        ".svg" => "image/svg+xml",
        ".mp4" => "video/mp4",
        ".avi" => "video/x-msvideo",
        ".mov" => "video/quicktime",
        ".mkv" => "video/x-matroska",
        ".webm" => "video/webm",
        ".mp3" => "audio/mpeg",
        ".wav" => "audio/wav",
        ".ogg" => "audio/ogg",
        ".csv" => "text/csv",
        ".json" => "application/json",
        ".txt" | ".log" => "text/plain",
        ".md" => "text/markdown",
        ".zip" => "application/zip",
        ".tar" => "application/x-tar",
        ".gz" => "application/gzip",
        ".py" => "text/x-python",
        ".js" => "application/javascript",
        ".cpp" => "text/x-c++",
        ".c" | ".h" => "text/x-c",
        ".pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// sandrun's human-readable size (`1.5 KB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}
