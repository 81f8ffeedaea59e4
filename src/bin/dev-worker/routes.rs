//! sandrun's endpoints.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use super::control::{lock, ReceivedFile, ReceivedJob};
use super::files::{mime_type, sha256_bytes};
use super::http::{Request, Response};
use super::jobs::{logs_json, outputs_json, status_json, Job};
use super::state::{limits, Incarnation, Shared};
use super::text::cpp_number;
use super::upload::{self, Part};

/// sandrun's `GET /` body, indentation included.
const ROOT_BODY: &str = "{\n            \"service\": \"sandrun\",\n            \"status\": \"running\",\n            \"description\": \"Batch job execution with directory upload\",\n            \"privacy\": \"Jobs auto-delete after download\",\n            \"limits\": \"10 CPU-sec/min, 512MB RAM, 5 min timeout\"\n        }";

/// The kind of a request, for the recording.
pub fn kind(request: &Request) -> &'static str {
    let route = request.route();
    match (request.method.as_str(), route) {
        ("GET", "/") => "root",
        ("GET", "/health") => "health",
        ("GET", "/stats") => "stats",
        ("POST", "/submit") => "submit",
        ("GET", _) if route.starts_with("/status/") => "status",
        ("GET", _) if route.starts_with("/logs/") => "logs",
        ("GET", _) if route.starts_with("/outputs/") => "outputs",
        ("GET", _) if route.starts_with("/download/") => "download",
        ("GET", _) if route.starts_with("/stream/") => "stream",
        _ => "other",
    }
}

/// Answers one request. `/health` never takes the jobs lock; the job endpoints and the last
/// step of `/submit` wait for it, so they block while a job runs.
pub fn handle(
    shared: &Shared,
    run: &Incarnation,
    request: &Request,
    ip: &str,
    received_at: SystemTime,
) -> Response {
    let path = request.path.as_str();
    match kind(request) {
        "root" => Response::new(200, ROOT_BODY),
        "health" => health(shared),
        "stats" => stats(shared, run, ip),
        "submit" => submit(shared, run, request, ip, received_at),
        "status" => {
            let knobs = shared.control.get();
            let status = with_job(run, &path[8..], |job| match knobs.reported_status {
                Some(said) => status_json(&Job {
                    status: said,
                    ..job.clone()
                }),
                None => status_json(job),
            });
            padded(status, knobs.status_padding)
        }
        "logs" => with_job(run, &path[6..], logs_json),
        "outputs" => with_job(run, &path[9..], outputs_json),
        "download" => download(run, &path[10..]),
        _ => Response::error(404, "Not found"),
    }
}

/// A JSON object answer with a member `padding` of `bytes` bytes put first (`status_padding`).
fn padded(mut response: Response, bytes: usize) -> Response {
    if bytes > 0 && response.status == 200 && response.body.first() == Some(&b'{') {
        let mut body = format!("{{\"padding\":\"{}\",", "x".repeat(bytes)).into_bytes();
        body.extend_from_slice(&response.body[1..]);
        response.body = body;
    }
    response
}

fn health(shared: &Shared) -> Response {
    let knobs = shared.control.get();
    let id = shared
        .shown_key(&knobs)
        .map_or_else(|| "null".to_string(), |k| format!("\"{}\"", k.worker_id()));
    if knobs.fail_health {
        Response::new(
            503,
            format!("{{\"status\":\"unhealthy\",\"worker_id\":{id}}}"),
        )
    } else {
        Response::new(
            200,
            format!("{{\"status\":\"healthy\",\"worker_id\":{id}}}"),
        )
    }
}

fn stats(shared: &Shared, run: &Incarnation, ip: &str) -> Response {
    let knobs = shared.control.get();
    let quota = lock(&run.limiter).check(ip, limits(&knobs));
    let (queued, running) = lock(&run.jobs).counts();
    Response::new(
        200,
        format!(
            "{{\"your_quota\":{{\"used\":{},\"limit\":{},\"available\":{},\"active_jobs\":{},\
             \"can_submit\":{},\"reason\":\"{}\"}},\"system\":{{\"queue_length\":{queued},\
             \"active_jobs\":{running}}}}}",
            cpp_number(quota.cpu_used),
            cpp_number(knobs.cpu_seconds_per_minute),
            cpp_number(quota.cpu_available),
            quota.active_jobs,
            quota.can_submit,
            quota.reason
        ),
    )
}

fn with_job(run: &Incarnation, id: &str, render: impl Fn(&Job) -> String) -> Response {
    match lock(&run.jobs).jobs.get(id) {
        Some(job) => Response::new(200, render(job)),
        None => Response::error(404, "Job not found"),
    }
}

fn received(
    parts: &[Part],
    (ip, received_at): (&str, SystemTime),
    status: u16,
    id: Option<&str>,
) -> ReceivedJob {
    ReceivedJob {
        received_at,
        client_ip: ip.to_string(),
        status,
        job_id: id.map(str::to_string),
        files: parts
            .iter()
            .filter_map(|p| {
                Some(ReceivedFile {
                    part_name: p.name.clone(),
                    filename: p.filename.clone()?,
                    content_type: p.content_type.clone(),
                    sha256: sha256_bytes(&p.data),
                    bytes: p.data.clone(),
                })
            })
            .collect(),
        manifest: parts
            .iter()
            .rev()
            .find(|p| p.name == "manifest")
            .map(|p| p.data.clone()),
    }
}

fn submit(
    shared: &Shared,
    run: &Incarnation,
    request: &Request,
    ip: &str,
    received_at: SystemTime,
) -> Response {
    let created_at = Instant::now();
    let knobs = shared.control.get();
    let quota = lock(&run.limiter).check(ip, limits(&knobs));
    if !quota.can_submit {
        shared.recorder.throttled(ip, &quota.reason);
        return Response::new(
            429,
            format!(
                "{{\"error\":\"{}\",\"cpu_available\":{},\"active_jobs\":{}}}",
                quota.reason,
                cpp_number(quota.cpu_available),
                quota.active_jobs
            ),
        );
    }
    if let Some((status, message)) = &knobs.reject_submit {
        return Response::error(*status, message);
    }
    let parts = upload::parse_parts(request.header("Content-Type"), &request.body);
    if parts.is_empty() {
        shared
            .recorder
            .job(received(&parts, (ip, received_at), 400, None));
        return Response::error(400, "No files uploaded");
    }
    let id = run.next_job_id(knobs.id_seconds);
    let dir = run.root.join(&id);
    upload::save_files(&dir, &parts);
    let spec = upload::resolve(&dir, &parts);
    if spec.entrypoint.is_empty() {
        let _ = fs::remove_dir_all(&dir);
        shared
            .recorder
            .job(received(&parts, (ip, received_at), 400, None));
        return Response::error(400, "No entrypoint specified");
    }
    let hash = upload::job_hash(&dir, &spec);
    let registered = {
        let mut limiter = lock(&run.limiter);
        let ok = limiter.register_start(ip, &id, knobs.max_active_per_ip);
        shared.recorder.active(limiter.total_active());
        ok
    };
    if !registered {
        shared.recorder.throttled(ip, "Rate limit exceeded");
        let _ = fs::remove_dir_all(&dir);
        shared
            .recorder
            .job(received(&parts, (ip, received_at), 429, None));
        return Response::error(429, "Rate limit exceeded");
    }
    let job = Job::new(id.clone(), ip.to_string(), spec, (dir, hash), created_at);
    lock(&run.jobs).enqueue(job);
    shared
        .recorder
        .job(received(&parts, (ip, received_at), 200, Some(&id)));
    let answered = knobs.answered_job_id.as_deref().unwrap_or(&id);
    Response::new(
        200,
        serde_json::json!({"job_id": answered, "status": "queued"}).to_string(),
    )
}

/// The text of an I/O error without Rust's ` (os error N)` suffix, as `strerror` gives it.
fn os_message(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" (os error ") {
        Some((message, _)) => message.to_string(),
        None => text,
    }
}

fn download(run: &Incarnation, rest: &str) -> Response {
    let (id, file) = rest.split_once('/').unwrap_or((rest, ""));
    let mut table = lock(&run.jobs);
    let Some(job) = table.jobs.get(id) else {
        return Response::error(404, "Job not found");
    };
    if file.is_empty() {
        let tarball = run.root.join(format!("{id}.tar.gz"));
        let _ = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&job.dir)
            .arg(".")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let bytes = fs::read(&tarball).unwrap_or_default();
        let _ = fs::remove_file(&tarball);
        table.delete(id);
        return Response::new(200, bytes)
            .with_header("Content-Type", "application/gzip")
            .with_header(
                "Content-Disposition",
                &format!("attachment; filename=\"{id}.tar.gz\""),
            );
    }
    let full = format!("{}/{file}", job.dir.display());
    let canonical = |path: &Path| {
        fs::canonicalize(path).map_err(|e| {
            Response::error(
                500,
                &format!(
                    "filesystem error: cannot make canonical path: {} [{}]",
                    os_message(&e),
                    path.display()
                ),
            )
        })
    };
    let (work_dir, target) = match (canonical(&job.dir), canonical(Path::new(&full))) {
        (Ok(work_dir), Ok(target)) => (work_dir, target),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    if !target
        .to_string_lossy()
        .starts_with(work_dir.to_string_lossy().as_ref())
    {
        return Response::error(403, "Access denied: path traversal detected");
    }
    if !target.is_file() {
        return Response::error(404, "File not found");
    }
    match fs::read(&target) {
        Ok(bytes) => {
            let name = Path::new(file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Response::new(200, bytes)
                .with_header("Content-Type", mime_type(file))
                .with_header(
                    "Content-Disposition",
                    &format!("attachment; filename=\"{name}\""),
                )
        }
        Err(e) => Response::error(500, &os_message(&e)),
    }
}
