//! Seeded, bounded fuzz loops over every parser a stranger or a damaged disk can feed: the
//! upload path (multipart parser and the submit checks), path decoding, workers.json, the keys
//! file, a worker's JSON answers, the readers of the state directory, and the HTTP front of the real binary (request line, headers,
//! routes; the PROXY protocol headers of a trusted proxy). No panic, no hang, every bad input a
//! 4xx or a clean error. `make fuzz` runs them
//! longer (TP_FUZZ_ITERATIONS, TP_FUZZ_SECONDS).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use trusted_pool::base::api_keys;
use trusted_pool::base::config::{DiskReserveSetting, FsyncMode, ServeConfig};
use trusted_pool::base::hex;
use trusted_pool::base::job::{Span, StoredResults};
use trusted_pool::base::paths::{encode_path, percent_decode, safe_relative_path};
use trusted_pool::http::auth::Caller;
use trusted_pool::http::upload;
use trusted_pool::state::context::Context;
use trusted_pool::state::pool_state::PoolState;
use trusted_pool::store::jobs_db::{JobStore, Retention};
use trusted_pool::store::spool::Spool;
use trusted_pool::worker::sandrun_json;
use trusted_pool::worker::workers_file;

use support::fuzz::{mutate, run, Rng};
use support::{proxy_v2_header, status_of, temp_dir, Coordinator, FakeWorker, Form};

const PATH_TOKENS: [&[u8]; 12] = [
    b"%", b"%2e", b"%2F", b"%2f", b"..", b"/", b"%00", b"%+1", b"\\", b"%C3%A9", b"\xff", b"%%",
];

/// True when every `%` starts an escape of two hex digits.
fn escapes_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

#[test]
fn path_decoding_never_panics_and_never_lets_a_traversal_through() {
    run("paths", 0x5EED_0001, 50_000, 10, |rng| {
        let mut input = b"out/sub/result.txt".to_vec();
        mutate(rng, &mut input, &PATH_TOKENS);
        let text = String::from_utf8_lossy(&input).into_owned();
        let decoded = percent_decode(&text);
        assert!(
            decoded.is_err() || escapes_well_formed(&text),
            "{text:?} decoded as {decoded:?}"
        );
        if let Ok(decoded) = decoded {
            if let Ok(safe) = safe_relative_path(&decoded) {
                assert!(!safe.starts_with('/'), "{safe:?}");
                for part in safe.split('/') {
                    assert!(!matches!(part, "" | "." | ".."), "{safe:?} from {text:?}");
                    assert!(!part.contains('\\') && !part.chars().any(char::is_control));
                }
            }
            assert_eq!(
                percent_decode(&encode_path(&decoded)).as_deref(),
                Ok(decoded.as_str()),
                "encode then decode changes {decoded:?}"
            );
        }
    });
}

/// Bytes as sandrun's `json_escape` writes them where `char` is signed (x86): each byte at or
/// above 0x80 and each control byte as its own `\u00XX`, `signed` false writes those raw (arm64).
fn sandrun_escaped(bytes: &[u8], signed: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for &byte in bytes {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0..=0x1f => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            0x80.. if signed => out.extend_from_slice(format!("\\u{byte:04x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out
}

#[test]
fn worker_json_reads_back_the_bytes_sandrun_escaped_and_never_panics() {
    const TOKENS: [&[u8]; 8] = [
        b"\\u00",
        b"\\u00c3",
        b"\\",
        b"\"",
        b"\xc3\xa9",
        b"\xff",
        b"\\u00e9",
        b"\xe2\x9c\x93",
    ];
    run("worker-json", 0x5EED_0007, 50_000, 10, |rng| {
        let mut text = "h\u{e9}llo \u{2713} \\ \"q\"\n".as_bytes().to_vec();
        mutate(rng, &mut text, &TOKENS);
        for signed in [true, false] {
            let mut body = b"{\"stdout\":\"".to_vec();
            body.extend(sandrun_escaped(&text, signed));
            body.extend_from_slice(b"\"}");
            let value = sandrun_json::parse(&body).unwrap_or_else(|e| {
                panic!("{:?} does not parse: {e}", String::from_utf8_lossy(&body))
            });
            assert_eq!(
                value["stdout"].as_str(),
                Some(String::from_utf8_lossy(&text).as_ref()),
                "escaped with a signed char: {signed}"
            );
            let mut damaged = body.clone();
            mutate(rng, &mut damaged, &TOKENS);
            let _ = sandrun_json::parse(&damaged);
        }
    });
}

const JSON_TOKENS: [&[u8]; 16] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"-1",
    b"1e400",
    b"0",
    b"\"https://[::1]:0\"",
    b"\"http://a:99999\"",
    b"\"max_concurrent_jobs\"",
    b"\\u0000",
    b"\xff",
];

#[test]
fn mutated_workers_files_parse_or_are_refused_with_a_message() {
    let worker = "He7P3kzyklbzEfhMTtht10tA8QYEU3JK+dKgggIJ1IY=";
    let seed = format!(
        r#"[{{"worker_id": "{worker}", "endpoint": "http://127.0.0.1:9001", "max_concurrent_jobs": 2}},
            {{"worker_id": "{worker}", "endpoint": "https://localhost:9443/x"}}]"#
    );
    let (mut accepted, mut refused) = (0, 0);
    run("workers.json", 0x5EED_0002, 30_000, 10, |rng| {
        let mut input = seed.clone().into_bytes();
        mutate(rng, &mut input, &JSON_TOKENS);
        match workers_file::parse(&String::from_utf8_lossy(&input)) {
            Ok(specs) => {
                for spec in specs {
                    assert!(
                        spec.endpoint.starts_with("http://")
                            || spec.endpoint.starts_with("https://")
                    );
                    assert!(spec.max_concurrent_jobs >= 1);
                }
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    });
    assert!(refused > 0, "{accepted} accepted, {refused} refused");
}

/// Added to [`JSON_TOKENS`] for the keys file.
const KEY_TOKENS: [&[u8]; 2] = [b"\"admin\"", b"\"max_queued_jobs\""];

const KEY_FIELDS: [&str; 5] = ["name", "key_sha256", "role", "max_queued_jobs", "extra"];

/// A random JSON value of the kinds a keys file might wrongly hold.
fn random_key_value(rng: &mut Rng) -> Value {
    let long_name = "x".repeat(api_keys::MAX_NAME_LEN + 1);
    match rng.below(9) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(-(rng.below(5) as i64)),
        4 => json!(rng.below(4) as f64 + 0.5),
        5 => json!(hex::hex(&api_keys::hash_key(&rng.next().to_le_bytes()))),
        6 => json!(*rng.pick(&["submit", "admin", "ADMIN", "", "a b", "é", &long_name])),
        7 => json!([rng.below(3)]),
        _ => json!({"k": rng.below(3)}),
    }
}

/// Changes a keys file as JSON: a field set to a random value, removed or added, or an entry
/// duplicated, so the validation itself (not only the JSON parser) meets odd input.
fn mutate_key_entries(rng: &mut Rng, input: &mut Vec<u8>) {
    let Ok(Value::Array(mut entries)) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    if entries.is_empty() {
        return;
    }
    let at = rng.below(entries.len());
    match rng.below(5) {
        0 => entries.push(entries[at].clone()),
        1 => entries[at] = random_key_value(rng),
        _ => {
            let field = *rng.pick(&KEY_FIELDS);
            let value = random_key_value(rng);
            let remove = rng.below(4) == 0;
            if let Value::Object(object) = &mut entries[at] {
                if remove {
                    object.remove(field);
                } else {
                    object.insert(field.to_string(), value);
                }
            }
        }
    }
    *input = serde_json::to_vec(&entries).unwrap_or_default();
}

#[test]
fn mutated_key_files_parse_or_are_refused_with_a_message() {
    let entry = |name: &str, key: &str, role: &str| json!({"name": name, "key_sha256": hex::hex(&api_keys::hash_key(key.as_bytes())), "role": role});
    let bob = json!({"name": "bob", "role": "submit", "max_queued_jobs": 3,
        "key_sha256": "00000000000000000000000000000000000000000000000000000000000000AA"});
    let seed = json!([
        entry("alice", "key-a", "submit"),
        entry("ops", "key-o", "admin"),
        bob
    ]);
    let seed = serde_json::to_vec(&seed).unwrap_or_default();
    let tokens = [&JSON_TOKENS[..], &KEY_TOKENS[..]].concat();
    let (mut accepted, mut refused) = (0, 0);
    run("keys file", 0x5EED_0012, 20_000, 10, |rng| {
        let mut input = seed.clone();
        if rng.below(2) == 0 {
            mutate_key_entries(rng, &mut input);
            mutate_key_entries(rng, &mut input);
        } else {
            mutate(rng, &mut input, &tokens);
        }
        match api_keys::parse(&input) {
            Ok(set) => {
                assert!(!set.keys().is_empty());
                assert!(set.keys().iter().all(|k| api_keys::is_valid_name(&k.name)));
                accepted += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    });
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}

const MULTIPART_TOKENS: [&[u8]; 19] = [
    b"\r\n",
    b"--",
    b"--XyZ",
    b"--XyZ--",
    b"Content-Disposition: form-data; name=\"files\"; filename=\"",
    b"name=\"manifest\"",
    b"filename=\"../x\"",
    b"Content-Type: ",
    b"\"",
    b";",
    b"\r\n\r\n",
    b"{\"entrypoint\": 1}",
    b"----Tar\nPath: ",
    b"\n\n",
    b"filename=\"job.json\"",
    b"\"entrypoint\":\"../",
    b"/../",
    b"\0",
    b"\xff",
];

fn retention(spool: &Spool) -> Retention {
    let (results_dir, segments) = spool.results_segments();
    Retention {
        jobs: 1000,
        for_secs: 3600.0,
        bytes: 0,
        results_dir,
        segments,
    }
}

fn upload_context(dir: &std::path::Path) -> Arc<Context> {
    let config = ServeConfig {
        state_dir: dir.to_path_buf(),
        max_upload_bytes: 64 * 1024,
        // A small fixed reserve: 1% of a large shared disk may be more than it has free.
        disk_reserve: DiskReserveSetting::Bytes(8 * 1024 * 1024),
        ..ServeConfig::default()
    };
    let spool = Spool::open(dir, 1024 * 1024).expect("spool");
    let (store, _) = JobStore::open(dir, FsyncMode::Off, retention(&spool)).expect("store");
    let (ctx, _signals) = Context::new(
        config,
        PoolState::new(Vec::new(), Instant::now()),
        spool,
        store,
    );
    let ctx = Arc::new(ctx);
    ctx.attach();
    ctx
}

#[test]
fn mutated_uploads_are_queued_or_refused_with_a_4xx() {
    let dir = temp_dir();
    let ctx = upload_context(dir.path());
    let form = Form::new()
        .file("main.py", "text/x-python", b"print('hello')\n")
        .file("data.txt", "text/plain", b"some data\n")
        .file(
            "job.json",
            "application/json",
            br#"{"entrypoint": "main.py"}"#,
        )
        .file(
            "quick.txt",
            "text/plain",
            b"----Tar\nPath: run.py\n\nprint(2)\n",
        )
        .manifest(r#"{"entrypoint": "main.py", "args": ["-v"]}"#);
    let body = form.body();
    let content_type = form.content_type();
    let boundary = upload::boundary_of(Some(&content_type)).expect("the seed's boundary");
    let body = String::from_utf8_lossy(&body).replace(&boundary, "XyZ");
    let caller = Caller::open();
    let (mut queued, mut refused) = (0, 0);
    run("upload", 0x5EED_0003, 20_000, 15, |rng| {
        let mut input = body.clone().into_bytes();
        mutate(rng, &mut input, &MULTIPART_TOKENS);
        let mut content_type = b"multipart/form-data; boundary=XyZ".to_vec();
        if rng.below(8) == 0 {
            mutate(rng, &mut content_type, &[b";", b"boundary=", b"\"", b" "]);
        }
        let content_type = String::from_utf8_lossy(&content_type).into_owned();
        let checked = upload::check_headers(&ctx, Some(&content_type), Some(input.len()));
        let outcome = checked.and_then(|boundary| {
            let length = Some(input.len());
            let body = upload::UploadBody {
                boundary,
                reader: &mut input.as_slice(),
                length,
            };
            upload::accept(&ctx, &caller, upload::SubmitOptions::default(), body, None)
        });
        match outcome {
            Ok(id) => {
                assert!(id.starts_with("pool-"), "{id}");
                queued += 1;
            }
            Err(e) => {
                assert!(
                    (400..500).contains(&e.status()),
                    "{} for {:?}: {e}",
                    e.status(),
                    String::from_utf8_lossy(&input)
                );
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    });
    assert!(
        queued > 0 && refused > 0,
        "{queued} queued, {refused} refused"
    );
}

#[test]
fn state_directory_readers_refuse_damaged_or_foreign_files_cleanly() {
    let dir = temp_dir();
    let names: [&str; 8] = [
        "1700000000-0",
        "../workers.json",
        "",
        ".",
        "..",
        "a/b",
        "1700000000-0\0",
        "/etc/passwd",
    ];
    run("state dir", 0x5EED_0004, 300, 10, |rng| {
        // Junk where the spool keeps its segments, then the spool opens over it.
        for sub in ["uploads", "results"] {
            let folder = dir.path().join(sub);
            let _ = std::fs::create_dir_all(&folder);
            let mut junk = vec![0u8; rng.below(4096)];
            junk.iter_mut().for_each(|b| *b = rng.next() as u8);
            let _ = std::fs::write(folder.join(*rng.pick(&names[..1])), &junk);
        }
        let spool = Spool::open(dir.path(), rng.below(1 << 20) as u64).expect("spool opens");
        let name = *rng.pick(&names);
        let span = Span {
            offset: rng.next() % 8192,
            size: rng.next() % 8192,
        };
        let stored = StoredResults {
            segment: name.to_string(),
            outputs: Vec::new(),
            logs: span,
            in_row: false,
            left_on_worker: Vec::new(),
            served_sha256: Vec::new(),
            row_bytes: None,
        };
        if let Ok(mut reader) = spool.open_results(&stored, span) {
            assert!(
                !name.contains('/') && !matches!(name, "" | "." | ".."),
                "{name:?} was opened"
            );
            let mut bytes = Vec::new();
            let _ = reader.read_to_end(&mut bytes);
            assert!(bytes.len() as u64 <= span.size);
        }
    });
}

const HTTP_TOKENS: [&[u8]; 16] = [
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"%",
    b"%2e%2e/",
    b"/../",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"HTTP/2.0",
    b"POST",
    b"\0",
    b"\xff",
    b"?a=%zz",
];

/// Sends raw bytes and reads what comes back within a few seconds (status 0: none).
fn exchange(port: u16, request: &[u8]) -> (u16, String) {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    exchange_on(stream, request)
}

/// Sends raw bytes on `stream`, ends its side, and reads what comes back within a few seconds
/// (status 0: none).
fn exchange_on(mut stream: TcpStream, request: &[u8]) -> (u16, String) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&text), text)
}

#[test]
fn mutated_requests_to_the_real_binary_get_an_answer_and_never_a_5xx() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "2"]);
    let port = coordinator.port();
    let seeds: [&[u8]; 4] = [
        b"GET /status/pool-0123456789abcdef HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n",
        b"GET /outputs/pool-0123/out%2Fresult.txt HTTP/1.1\r\nHost: pool\r\n\r\n",
        b"GET /pool HTTP/1.1\r\nHost: pool\r\nAccept: */*\r\n\r\n",
        b"POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 8\r\n\r\n--XyZ--\r\n",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    run("http front", 0x5EED_0005, 3000, 30, |rng: &mut Rng| {
        let mut request = rng.pick(&seeds).to_vec();
        mutate(rng, &mut request, &HTTP_TOKENS);
        let (status, answer) = exchange(port, &request);
        // 501: a transfer coding besides chunked; 505: an HTTP version above 1.1.
        assert!(
            !(500..600).contains(&status) || [501, 503, 505].contains(&status),
            "{status} for {:?}: {answer}",
            String::from_utf8_lossy(&request)
        );
        *statuses.entry(status).or_insert(0) += 1;
    });
    eprintln!("fuzz http front: statuses {statuses:?}");
    let (status, _) = exchange(port, b"GET /health HTTP/1.1\r\nHost: pool\r\n\r\n");
    assert_eq!(status, 200, "the coordinator stopped answering");
    // Every connection ends: none is left waiting on itself (an HTTP/2.0 request did).
    let mut open = None;
    let ended = support::poll_until(Duration::from_secs(30), || {
        let (_, pool) = support::get_json(&coordinator.url("/pool"));
        open = pool["connections"]["open"].as_u64();
        (open == Some(1)).then_some(())
    });
    assert!(ended.is_some(), "{open:?} connections still open");
}

const PROXY_TOKENS: [&[u8]; 12] = [
    b"PROXY ",
    b"TCP4 ",
    b"TCP6 ",
    b"UNKNOWN",
    b"\r\n",
    b" ",
    b"\r\n\r\n\0\r\nQUIT\n",
    b"\x21\x11",
    b"\x20\x00",
    b"\xff\xff",
    b"::ffff:",
    b"65536",
];

#[test]
fn mutated_proxy_headers_from_a_trusted_proxy_are_read_or_refused_and_never_a_5xx() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--client-timeout",
            "2",
            "--trusted-proxies",
            "127.0.0.2",
            "--proxy-protocol",
        ],
    );
    let port = coordinator.port();
    let request = b"GET /jobs HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n";
    let mut v4 = vec![203, 0, 113, 7, 127, 0, 0, 1, 0xC3, 0x50, 0x23, 0x28];
    let seeds: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 203.0.113.7 127.0.0.1 50000 9000\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 ::1 50000 9000\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        proxy_v2_header(0x21, 0x11, &v4),
        proxy_v2_header(0x21, 0x21, &[0x20; 36]),
        proxy_v2_header(0x20, 0x00, &[]),
        {
            v4.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
            proxy_v2_header(0x21, 0x11, &v4)
        },
    ];
    let proxy = std::net::IpAddr::from([127, 0, 0, 2]);
    let from_proxy = |bytes: &[u8]| exchange_on(coordinator.connect_from(proxy), bytes);
    let mut statuses = std::collections::BTreeMap::new();
    run("proxy header", 0x5EED_0006, 1500, 20, |rng: &mut Rng| {
        let mut header = rng.pick(&seeds).clone();
        mutate(rng, &mut header, &PROXY_TOKENS);
        let mut bytes = header.clone();
        bytes.extend_from_slice(request);
        let (status, answer) = from_proxy(&bytes);
        assert!(
            !(500..600).contains(&status) || status == 503,
            "{status} for {:?}: {answer}",
            String::from_utf8_lossy(&header)
        );
        *statuses.entry(status).or_insert(0) += 1;
    });
    eprintln!("fuzz proxy header: statuses {statuses:?}");
    assert!(statuses.get(&200) > Some(&0), "{statuses:?}");
    assert!(statuses.get(&400) > Some(&0), "{statuses:?}");
    let mut valid = seeds[0].clone();
    valid.extend_from_slice(request);
    assert_eq!(
        from_proxy(&valid).0,
        200,
        "the coordinator stopped reading headers"
    );
    let (status, _) = exchange(port, b"GET /health HTTP/1.1\r\nHost: pool\r\n\r\n");
    assert_eq!(status, 200, "the coordinator stopped answering");
    let logs = coordinator.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
