//! `POST /submit` refuses every bad upload with a 4xx JSON error that says what to fix, and a
//! refused upload leaves nothing behind in the spool, queues nothing and reaches no worker.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::lifecycle::{
    assert_pool_consistent, chunked, exchange, submit, wait_collected, wait_healthy,
};
use support::{
    get_json, poll_until, send, temp_dir, Coordinator, FakeWorker, Form, ReceivedJob, Reply,
};

/// `--max-upload-bytes` of these tests: every good test body is smaller.
const MAX_UPLOAD: usize = 1000;
/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

const MAIN_PY: &[u8] = b"print('hello')\n";
const MANIFEST: &str = r#"{"entrypoint":"main.py","outputs":["*.txt"]}"#;

/// A worker and a coordinator in front of it with a small upload limit.
fn start() -> (FakeWorker, Coordinator) {
    let worker = FakeWorker::start();
    let limit = MAX_UPLOAD.to_string();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--max-upload-bytes",
            &limit,
            "--health-interval",
            "1",
            "--track-interval",
            "0.1",
        ],
    );
    (worker, coordinator)
}

fn good_form() -> Form {
    Form::new()
        .file("main.py", "text/x-python", MAIN_PY)
        .manifest(MANIFEST)
}

/// Entries of `<state_dir>/uploads`, and one `memory: N` entry when uploads are held in memory.
fn spool_entries(coordinator: &Coordinator) -> Vec<String> {
    let (status, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(status, 200, "{pool}");
    let held = &pool["spool"]["uploads_in_memory"];
    let held = held
        .as_u64()
        .unwrap_or_else(|| panic!("no spool.uploads_in_memory in {pool}"));
    let jobs = coordinator.state_dir().join("uploads");
    let in_memory = (held > 0).then(|| format!("memory: {held}"));
    fs::read_dir(&jobs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", jobs.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", jobs.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .chain(in_memory)
        .collect()
}

/// `POST /submit` with this Content-Type (none when `None`) and body, through the test client.
fn post_submit(coordinator: &Coordinator, content_type: Option<&str>, body: &[u8]) -> Reply {
    let url = coordinator.url("/submit");
    let reply = match content_type {
        Some(content_type) => send("POST", &url, Some((content_type, body))),
        None => send("POST", &url, None),
    };
    reply.unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts a refusal: `status`, a JSON `{"error": ...}` containing `needle`, and an empty spool.
fn assert_refused(coordinator: &Coordinator, case: &str, reply: &Reply, status: u16, needle: &str) {
    let body = reply.json();
    assert_eq!(reply.status, status, "{case}: {}", reply.text());
    assert!(
        reply
            .header("Content-Type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{case}: not JSON: {:?}",
        reply.headers
    );
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no error message in {}", reply.text()));
    assert!(
        error.contains(needle),
        "{case}: the message {error:?} does not say {needle:?}"
    );
    assert_eq!(
        spool_entries(coordinator),
        Vec::<String>::new(),
        "{case}: the refused upload left files behind"
    );
}

/// The job an accepted submit (`reply`) made, once collected, and what the worker got first.
fn first_job_sent(
    coordinator: &Coordinator,
    worker: &FakeWorker,
    reply: &Reply,
    case: &str,
) -> (String, ReceivedJob) {
    assert_eq!(reply.status, 200, "{case}: {}", reply.text());
    let id = reply.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    wait_collected(coordinator, &id, DEADLINE);
    let job = worker
        .recording()
        .jobs
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{case}: the worker never got the job"));
    (id, job)
}

/// Submits `main.py` under each case's part headers; each is refused 400 with its needle.
fn refuse_part_headers(coordinator: &Coordinator, cases: &[(&str, String, &str)]) {
    for (case, headers, needle) in cases {
        let form = Form::new().raw_part(headers, MAIN_PY);
        let reply = post_submit(coordinator, Some(&form.content_type()), &form.body());
        assert_refused(coordinator, case, &reply, 400, needle);
    }
}

/// After the refusals: nothing was queued nor sent, `/pool` adds up, and a good job still runs.
fn assert_nothing_queued_then_a_good_job_runs(coordinator: &Coordinator, worker: &FakeWorker) {
    let pool = assert_pool_consistent(coordinator);
    assert_eq!(pool["total_jobs"], 0, "a refused submit was queued: {pool}");
    assert_eq!(worker.recording().count("POST", "submit"), 0);
    wait_healthy(coordinator, &[worker], DEADLINE);
    let id = submit(coordinator, &good_form());
    let status = wait_collected(coordinator, &id, DEADLINE);
    assert_eq!(status["files"][0]["filename"], "main.py", "{status}");
    assert_eq!(
        spool_entries(coordinator),
        Vec::<String>::new(),
        "the upload stayed in the spool after the worker took it"
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200, "the collected logs cannot be read: {logs}");
    let pool = assert_pool_consistent(coordinator);
    assert_eq!(pool["total_jobs"], 1, "{pool}");
    assert_eq!(pool["jobs_by_status"]["completed"], 1, "{pool}");
}

#[test]
fn a_body_that_is_not_a_complete_multipart_form_is_refused() {
    let (worker, coordinator) = start();
    let form = good_form();
    let body = form.body();

    let reply = post_submit(&coordinator, Some("text/plain"), b"print('hello')\n");
    assert_refused(
        &coordinator,
        "text/plain",
        &reply,
        415,
        "multipart/form-data",
    );
    let reply = post_submit(&coordinator, Some("application/json"), br#"{"a":1}"#);
    assert_refused(&coordinator, "JSON body", &reply, 415, "application/json");
    let reply = post_submit(&coordinator, None, b"");
    assert_refused(&coordinator, "no Content-Type", &reply, 415, "none");

    let reply = post_submit(&coordinator, Some("multipart/form-data"), &body);
    assert_refused(&coordinator, "no boundary", &reply, 400, "no boundary");
    let reply = post_submit(&coordinator, Some("multipart/form-data; boundary="), &body);
    assert_refused(&coordinator, "empty boundary", &reply, 400, "no boundary");

    let boundary = form
        .content_type()
        .split_once("boundary=")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let closing = format!("--{boundary}--\r\n");
    assert!(body.ends_with(closing.as_bytes()));
    let without_closing = &body[..body.len() - closing.len()];
    let file_last = Form::new()
        .manifest(MANIFEST)
        .file("main.py", "text/x-python", &[b'#'; 300]);
    let file_last_body = file_last.body();
    let file_data_at = file_last_body.len() - closing.len() - 2 - 300;
    let malformed = "malformed or truncated";
    let cases: [(&str, &[u8], &str); 6] = [
        ("no closing boundary", without_closing, malformed),
        ("cut in half", &body[..body.len() / 2], malformed),
        (
            "cut inside the manifest",
            &body[..body.len() - closing.len() - 10],
            "is not valid JSON: EOF",
        ),
        (
            "cut inside the file data",
            &file_last_body[..file_data_at + 150],
            malformed,
        ),
        (
            "cut after the file data",
            &file_last_body[..file_data_at + 300],
            malformed,
        ),
        ("empty body", b"", malformed),
    ];
    for (case, truncated, needle) in cases {
        let reply = post_submit(&coordinator, Some(&form.content_type()), truncated);
        assert_refused(&coordinator, case, &reply, 400, needle);
    }
    let reply = post_submit(
        &coordinator,
        Some(&form.content_type()),
        b"this is not multipart at all\r\n",
    );
    assert_refused(&coordinator, "garbage", &reply, 400, "malformed");

    assert_nothing_queued_then_a_good_job_runs(&coordinator, &worker);
}

#[test]
fn bad_parts_are_refused_with_what_to_fix() {
    let (worker, coordinator) = start();
    let main_py = || Form::new().file("main.py", "text/x-python", MAIN_PY);
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "only a manifest",
            Form::new().manifest(MANIFEST),
            "no 'files' part",
        ),
        (
            "files part without filename",
            Form::new().field("files", MAIN_PY),
            "has no filename",
        ),
        (
            "files part with an empty filename",
            Form::new().file("", "text/x-python", MAIN_PY),
            "not allowed",
        ),
        (
            "filename with a slash",
            Form::new().file("dir/main.py", "text/x-python", MAIN_PY),
            "not allowed",
        ),
        (
            "filename ..",
            Form::new().file("..", "text/x-python", MAIN_PY),
            "not allowed",
        ),
        (
            "filename climbing up",
            Form::new().file("../main.py", "text/x-python", MAIN_PY),
            "not allowed",
        ),
        (
            "absolute filename",
            Form::new().file("/etc/passwd", "text/plain", MAIN_PY),
            "not allowed",
        ),
        (
            "a name sandrun would take for an archive it is not",
            main_py().file("results.zip.txt", "text/plain", b"notes\n"),
            "holds \".zip\": a sandrun worker takes a file whose name holds",
        ),
        (
            "a name with .tgz inside",
            main_py().file("data.tgz.sha256", "text/plain", b"abc\n"),
            "holds \".tgz\"",
        ),
        (
            "a zip that sandrun would untar",
            main_py().file("x.tgz.zip", "application/zip", b"PK\x03\x04"),
            "holds \".tgz\"",
        ),
        (
            "a fake tar that sandrun would write outside the job's directory",
            Form::new().file(
                "job.tar.gz",
                "application/x-tar",
                b"----Tar\nPath: ../../etc/cron.d/x\nSize: 4\n\nboom",
            ),
            "the file \"job.tar.gz\" begins with the lines ----Tar and Path:, the form of one file a sandrun worker's web frontend sends: the worker writes what follows the first blank line under the name on the Path: line, here \"../../etc/cron.d/x\", which is not a plain file name; give the lines ----Tar, Path: main.py",
        ),
        (
            "a fake tar whose name sandrun would read from the wrong place",
            main_py().file("code.txt", "text/plain", b"----Tar\nPath:main.py\n\nx\n"),
            "which is not readable here (the line is \"Path:main.py\")",
        ),
        (
            "an entrypoint that leads out of the job's directory",
            main_py().manifest(r#"{"entrypoint":"../../../dev/zero"}"#),
            "the entrypoint \"../../../dev/zero\", as a sandrun worker reads it from the manifest (the text in quotes after the first \"entrypoint\" anywhere in it, escapes as they stand), has a '..' component: the worker reads that path on its host",
        ),
        (
            "an entrypoint sandrun reads from a nested key, the first",
            main_py().manifest(r#"{"env":{"entrypoint":"a/../../x.py"},"entrypoint":"main.py"}"#),
            "the entrypoint \"a/../../x.py\", as a sandrun worker reads it from the manifest",
        ),
        (
            "an entrypoint sandrun cannot look up",
            main_py().manifest(&format!(r#"{{"entrypoint":"{}.py"}}"#, "m".repeat(300))),
            "has a part of 303 bytes, more than the 255 a file name may have: the worker's look-up of it fails and it answers the submit 500",
        ),
        (
            "a job.json whose entrypoint leads out of the job's directory",
            main_py().file(
                "job.json",
                "application/json",
                br#"{"entrypoint":"../../etc/shadow"}"#,
            ),
            "the entrypoint \"../../etc/shadow\", as a sandrun worker reads it from the job.json",
        ),
        (
            "a fake tar that sandrun saves as such a job.json",
            main_py().file(
                "settings.txt",
                "text/plain",
                b"----Tar\nPath: job.json\n\n{\"entrypoint\":\"../x\"}",
            ),
            "the entrypoint \"../x\", as a sandrun worker reads it from the job.json",
        ),
        (
            "filename with a backslash",
            Form::new().file("..\\main.py", "text/x-python", MAIN_PY),
            "(a backslash in a quoted value: ..\\main.py); give it as form-data",
        ),
        (
            "filename with NUL",
            Form::new().raw_part(
                "Content-Disposition: form-data; name=\"files\"; filename=\"main\0.py\"",
                MAIN_PY,
            ),
            "headers are invalid",
        ),
        (
            "filename with a control character",
            Form::new().raw_part(
                "Content-Disposition: form-data; name=\"files\"; filename=\"main\x01.py\"",
                MAIN_PY,
            ),
            "headers are invalid",
        ),
        (
            "filename with a tab",
            Form::new().raw_part(
                "Content-Disposition: form-data; name=\"files\"; filename=\"main\t.py\"",
                MAIN_PY,
            ),
            "not allowed",
        ),
        (
            "a filename of 256 bytes",
            Form::new().file(&"n".repeat(256), "text/x-python", MAIN_PY),
            "a filename of 256 bytes is too long: at most 255 bytes",
        ),
        (
            "a Content-Type of 300 bytes",
            Form::new().file(
                "main.py",
                &format!("text/x-python; x={}", "a".repeat(280)),
                MAIN_PY,
            ),
            "the Content-Type of the file \"main.py\" is 297 bytes long: at most 255",
        ),
        (
            "two files with one name",
            main_py().file("main.py", "text/plain", b"x = 1\n"),
            "two 'files' parts",
        ),
        (
            "manifest not JSON",
            main_py().manifest("{entrypoint: main.py"),
            "not valid JSON",
        ),
        (
            "manifest a JSON array",
            main_py().manifest(r#"["main.py"]"#),
            "must be a JSON object",
        ),
        (
            "manifest a JSON string",
            main_py().manifest(r#""main.py""#),
            "must be a JSON object",
        ),
        (
            "manifest twice",
            main_py().manifest(MANIFEST).manifest(MANIFEST),
            "given twice",
        ),
        (
            "unknown part",
            main_py().field("colour", b"high"),
            "unknown part \"colour\"",
        ),
        (
            "unknown priority",
            main_py().field("priority", b"urgent"),
            "\"urgent\" is unknown",
        ),
        (
            "priority twice",
            main_py()
                .field("priority", b"high")
                .field("priority", b"low"),
            "priority is given twice",
        ),
        (
            "queue timeout of zero",
            main_py().field("queue_timeout", b"0"),
            "\"0\" is not a number of seconds above 0",
        ),
        (
            "queue timeout past 1e9 s",
            main_py().field("queue_timeout", b"1e300"),
            "\"1e300\" is not a number of seconds above 0 and at most 1000000000",
        ),
        (
            "queue timeout not a number",
            main_py().field("queue_timeout", b"soon"),
            "e.g. queue_timeout=600",
        ),
        (
            "queue timeout twice",
            main_py()
                .field("queue_timeout", b"5")
                .field("queue_timeout", b"6"),
            "queue_timeout is given twice",
        ),
    ];
    for (case, form, needle) in cases {
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_refused(&coordinator, case, &reply, 400, needle);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.len() > 20, "{case}: too terse a message: {error:?}");
    }
    assert_nothing_queued_then_a_good_job_runs(&coordinator, &worker);
}

/// An entrypoint inside the job is taken however it is given: in a subfolder, with `./`, with
/// a leading `/` (sandrun joins it to the job's directory with a `/`), and a `job.json` naming
/// one out of the job is not read while the manifest names an entrypoint.
#[test]
fn entrypoints_inside_the_job_are_taken_and_a_job_json_unread_is_not_looked_at() {
    let (worker, coordinator) = start();
    let manifests = [
        r#"{"entrypoint":"src/main.py"}"#,
        r#"{"entrypoint":"./main.py"}"#,
        r#"{"entrypoint":"/main.py"}"#,
        r#"{"entrypoint":"main.py","args":["../not/a/path"]}"#,
    ];
    for manifest in manifests {
        let form = Form::new()
            .file("main.py", "text/x-python", MAIN_PY)
            .file(
                "job.json",
                "application/json",
                br#"{"entrypoint":"../../dev/zero"}"#,
            )
            .manifest(manifest);
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_eq!(reply.status, 200, "{manifest}: {}", reply.text());
    }
    // A job.json over 1 MiB is not read: taken while the manifest names the entrypoint,
    // refused when sandrun would read the job's settings from it.
    let roomy = Coordinator::start(&[worker.entry(2)], &[]);
    let big = || {
        Form::new().file("main.py", "text/x-python", MAIN_PY).file(
            "job.json",
            "application/json",
            &vec![b' '; 1024 * 1024 + 1],
        )
    };
    let reply = post_submit(&roomy, Some(&big().content_type()), &big().body());
    assert_refused(
        &roomy,
        "a job.json over 1 MiB",
        &reply,
        400,
        "the manifest names no entrypoint, so a sandrun worker would read the job's settings from the job.json among its files, which is larger than the 1048576 bytes",
    );
    let named = big().manifest(r#"{"entrypoint":"main.py"}"#);
    let reply = post_submit(&roomy, Some(&named.content_type()), &named.body());
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// A `.tar.gz` made by GNU tar of `members` of a folder that `make` fills, with `args` before
/// them.
fn tar_of(make: impl Fn(&Path), args: &[&str], members: &[&str]) -> Vec<u8> {
    let dir = temp_dir();
    let tree = dir.path().join("tree");
    fs::create_dir_all(&tree).unwrap_or_else(|e| panic!("{e}"));
    make(&tree);
    let archive = dir.path().join("a.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .args(args)
        .args(members)
        .status()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(status.success(), "tar failed: {status}");
    fs::read(&archive).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str], dir: &Path) {
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// A zip of stored `entries` (name, whether a symbolic link, content) as a Unix zip tool
/// makes it (`zip -y` keeps links so).
fn zip_of(entries: &[(&str, bool, &[u8])]) -> Vec<u8> {
    zip_written(entries, false)
}

/// The same; `streamed`: each entry's CRC and sizes after its data, in a data descriptor
/// (general-purpose flag bit 3, zeros in the local header), as Python's zipfile stores into
/// a pipe and Go's archive/zip stores.
fn zip_written(entries: &[(&str, bool, &[u8])], streamed: bool) -> Vec<u8> {
    let (mut out, mut directory) = (Vec::new(), Vec::new());
    let flags: u16 = if streamed { 8 } else { 0 };
    for (name, link, content) in entries {
        let offset = out.len() as u32;
        let sizes = [content.len() as u32; 2].map(u32::to_le_bytes).concat();
        let described = [&crc32fast::hash(content).to_le_bytes()[..], &sizes].concat();
        out.extend_from_slice(b"PK\x03\x04\x0a\0");
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(if streamed { &[0; 12] } else { &described });
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(content);
        if streamed {
            out.extend_from_slice(&[&b"PK\x07\x08"[..], &described].concat());
        }
        let mode: u32 = if *link { 0o120777 } else { 0o100644 };
        directory.extend_from_slice(b"PK\x01\x02\x1e\x03\x0a\0");
        directory.extend_from_slice(&flags.to_le_bytes());
        directory.extend_from_slice(&[0; 6]);
        directory.extend_from_slice(&described);
        directory.extend_from_slice(&(name.len() as u16).to_le_bytes());
        directory.extend_from_slice(&[0; 8]);
        directory.extend_from_slice(&(mode << 16).to_le_bytes());
        directory.extend_from_slice(&offset.to_le_bytes());
        directory.extend_from_slice(name.as_bytes());
    }
    let (start, count) = (out.len() as u32, entries.len() as u16);
    out.extend_from_slice(&directory);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    out.extend_from_slice(&[count.to_le_bytes(), count.to_le_bytes()].concat());
    out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A zip whose stored entries give their sizes after their data (Python's zipfile storing
/// into a pipe, Go's archive/zip storing) is taken and sent on as it came. One whose data holds
/// a descriptor of its first bytes, forged so that the coordinator ends the entry there, while
/// the central directory (which unzip follows) gives it all its bytes, is refused.
#[test]
fn a_zip_stored_with_its_sizes_after_its_data_is_taken() {
    let (worker, coordinator) = start();
    let zip = zip_written(
        &[("main.py", false, MAIN_PY), ("data.txt", false, b"1\n")],
        true,
    );
    let form = Form::new()
        .file("job.zip", "application/zip", &zip)
        .manifest(MANIFEST);
    let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
    assert_eq!(reply.json()["status"], "queued", "{}", reply.text());
    let (_, job) = first_job_sent(&coordinator, &worker, &reply, "a streamed zip");
    assert_eq!(job.files[0].bytes, zip, "the zip was not sent as it came");

    let sizes = (MAIN_PY.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(MAIN_PY).to_le_bytes();
    let forged = [
        MAIN_PY,
        b"PK\x07\x08",
        &crc,
        &sizes,
        &sizes,
        b"PK\x01\x02 more",
    ]
    .concat();
    let zip = zip_written(&[("main.py", false, &forged)], true);
    let form = Form::new()
        .file("job.zip", "application/zip", &zip)
        .manifest(MANIFEST);
    let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
    assert_refused(
        &coordinator,
        "a descriptor forged inside stored data",
        &reply,
        400,
        "the archive \"job.zip\" holds a stored entry whose sizes in the central directory differ from its data descriptor's",
    );
}

/// sandrun unpacks an archive on its host with the system tar or unzip, which write links,
/// devices, pipes and (tar, as root) setuid files as they are: the coordinator reads each archive through as it streams in
/// and refuses what would be unpacked so, a `..` path, a job.json naming an entrypoint out of
/// the job, a file that is not the archive its name says, and archives over
/// --max-unpacked-bytes (413). Good archives are taken, and none under --refuse-archives.
#[test]
fn archives_are_read_through_and_refused_where_sandrun_would_unpack_harm() {
    let (worker, coordinator) = start();
    let code = |tree: &Path| fs::write(tree.join("main.py"), MAIN_PY).unwrap_or_default();
    let link = |tree: &Path| {
        code(tree);
        run("ln", &["-s", "/dev/zero", "data.txt"], tree);
    };
    let hard = |tree: &Path| {
        code(tree);
        run("ln", &["main.py", "copy.py"], tree);
    };
    let pipe = |tree: &Path| {
        code(tree);
        run("mkfifo", &["in.txt"], tree);
    };
    let job_json = |tree: &Path| {
        code(tree);
        fs::write(
            tree.join("job.json"),
            br#"{"entrypoint":"../../../dev/zero"}"#,
        )
        .unwrap_or_default();
    };
    let setuid = |tree: &Path| {
        code(tree);
        run("chmod", &["4755", "main.py"], tree);
    };
    let tarball = |tar: Vec<u8>| Form::new().file("job.tar.gz", "application/gzip", &tar);
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "a symbolic link",
            tarball(tar_of(link, &[], &["main.py", "data.txt"])),
            "the archive \"job.tar.gz\" holds \"data.txt\", a symbolic link: a sandrun worker unpacks it as that on its host",
        ),
        (
            "a hard link",
            tarball(tar_of(hard, &[], &["main.py", "copy.py"])),
            "holds \"copy.py\", a hard link",
        ),
        (
            "a named pipe",
            tarball(tar_of(pipe, &[], &["main.py", "in.txt"])),
            "holds \"in.txt\", a named pipe",
        ),
        (
            "a setuid file",
            tarball(tar_of(setuid, &[], &["main.py"])),
            "holds \"main.py\", a setuid or setgid file: GNU tar, run as root as sandrun is, writes it so",
        ),
        (
            "a path with ..",
            tarball(tar_of(code, &["-P", "--transform", "s,^,../,"], &["main.py"])),
            "holds \"../main.py\", whose '..' would lead out of the job's directory",
        ),
        (
            "a folder named as sandrun names the archive it unpacks",
            tarball(tar_of(
                |tree: &Path| fs::create_dir(tree.join("upload.tar.gz")).unwrap_or_default(),
                &[],
                &["upload.tar.gz"],
            )),
            "holds \"upload.tar.gz/\", the name a sandrun worker gives an archive it unpacks",
        ),
        (
            "a job.json reached through ./ and empty parts",
            tarball(tar_of(job_json, &[], &["main.py", ".//job.json"])),
            "the entrypoint \"../../../dev/zero\", as a sandrun worker reads it from the job.json",
        ),
        (
            "a job.json naming an entrypoint out of the job",
            tarball(tar_of(job_json, &[], &["main.py", "job.json"])),
            "the entrypoint \"../../../dev/zero\", as a sandrun worker reads it from the job.json",
        ),
        (
            "a tarball that is none",
            Form::new().file("job.tar.gz", "application/gzip", b"print(1)\n"),
            "the archive \"job.tar.gz\" is not a gzip-compressed tarball",
        ),
        (
            "a zip holding a symbolic link",
            Form::new().file(
                "job.zip",
                "application/zip",
                &zip_of(&[("main.py", false, MAIN_PY), ("data.txt", true, b"/dev/zero")]),
            ),
            "the archive \"job.zip\" holds \"data.txt\", a symbolic link",
        ),
        (
            "a zip that is none",
            Form::new().file("job.zip", "application/zip", b"PK not really"),
            "the archive \"job.zip\" is not a zip archive",
        ),
        (
            "a job.json in a zip that sandrun would read",
            Form::new().file(
                "job.zip",
                "application/zip",
                &zip_of(&[("main.py", false, MAIN_PY), ("job.json", false, b"{}")]),
            ),
            "would read the job's settings from the job.json inside a zip archive",
        ),
    ];
    for (case, form, needle) in cases {
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_refused(&coordinator, case, &reply, 400, needle);
    }
    let good = [
        tarball(tar_of(code, &[], &["main.py"])),
        tarball(tar_of(job_json, &[], &["main.py", "job.json"]))
            .manifest(r#"{"entrypoint":"main.py"}"#),
        Form::new()
            .file(
                "job.zip",
                "application/zip",
                &zip_of(&[("main.py", false, MAIN_PY), ("job.json", false, b"{}")]),
            )
            .manifest(r#"{"entrypoint":"main.py"}"#),
    ];
    for form in good {
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    let strict = Coordinator::start(
        &[worker.entry(2)],
        &["--refuse-archives", "--max-files", "2"],
    );
    let form = tarball(tar_of(code, &[], &["main.py"]));
    let reply = post_submit(&strict, Some(&form.content_type()), &form.body());
    assert_refused(
        &strict,
        "an archive under --refuse-archives",
        &reply,
        400,
        "the file \"job.tar.gz\" would be unpacked by a sandrun worker as an archive (its name holds .tar.gz, .tgz or .zip), and this coordinator takes no archives (--refuse-archives)",
    );
    // Too many files is not told to pack them into an archive here (it was).
    let three = Form::new()
        .file("main.py", "text/x-python", MAIN_PY)
        .file("a.txt", "text/plain", b"a")
        .file("b.txt", "text/plain", b"b");
    let reply = post_submit(&strict, Some(&three.content_type()), &three.body());
    assert_refused(
        &strict,
        "three files under --refuse-archives",
        &reply,
        413,
        "send fewer files (archives are refused here)",
    );
    let fake_tar = Form::new().file(
        "job.tar.gz",
        "application/x-tar",
        b"----Tar\nPath: main.py\n\nprint(1)\n",
    );
    for form in [
        fake_tar,
        Form::new().file("main.py", "text/x-python", MAIN_PY),
    ] {
        let reply = post_submit(&strict, Some(&form.content_type()), &form.body());
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    let small = Coordinator::start(&[worker.entry(2)], &["--max-unpacked-bytes", "4096"]);
    let big = |tree: &Path| fs::write(tree.join("zeros.bin"), [0u8; 5000]).unwrap_or_default();
    let form = tarball(tar_of(big, &[], &["zeros.bin"]));
    let reply = post_submit(&small, Some(&form.content_type()), &form.body());
    assert_refused(
        &small,
        "an archive over --max-unpacked-bytes",
        &reply,
        413,
        "the archive \"job.tar.gz\" unpacks, with the submit's other archives, to more than 4096 bytes (--max-unpacked-bytes)",
    );
}

#[test]
fn uploads_over_the_limit_are_refused_with_413() {
    let (worker, coordinator) = start();
    let big = Form::new()
        .file("main.py", "text/x-python", MAIN_PY)
        .file(
            "data.bin",
            "application/octet-stream",
            &[7u8; 4 * MAX_UPLOAD],
        )
        .manifest(MANIFEST);
    let limit_text = format!("limit of {MAX_UPLOAD} bytes");

    let reply = post_submit(&coordinator, Some(&big.content_type()), &big.body());
    assert_refused(
        &coordinator,
        "Content-Length over",
        &reply,
        413,
        &limit_text,
    );

    let head = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        big.content_type(),
        100 * MAX_UPLOAD
    );
    let reply = exchange(coordinator.port(), &head, b"").unwrap_or_else(|e| panic!("{e}"));
    assert_refused(
        &coordinator,
        "Content-Length over, body never sent",
        &reply,
        413,
        &limit_text,
    );

    let streamed = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n",
        big.content_type()
    );
    let reply = exchange(coordinator.port(), &streamed, &chunked(&big.body(), 256))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_refused(&coordinator, "streamed over", &reply, 413, &limit_text);

    let small = good_form();
    let reply = exchange(coordinator.port(), &streamed, &chunked(&small.body(), 64))
        .unwrap_or_else(|e| panic!("{e}"));
    let (id, job) = first_job_sent(&coordinator, &worker, &reply, "a small streamed upload");
    assert_eq!(job.files[0].bytes, MAIN_PY);
    assert_eq!(job.manifest.as_deref(), Some(MANIFEST.as_bytes()));
    assert_eq!(
        spool_entries(&coordinator),
        Vec::<String>::new(),
        "the upload stayed in the spool after the worker took it"
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200, "the collected logs cannot be read: {logs}");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["total_jobs"], 1, "{pool}");
}

/// sandrun takes 100 MiB in one request, head included, and answers a longer one 413 before
/// reading its body, closing the connection under the sender (which took the worker for
/// unreachable). A submit within `--max-upload-bytes` (100 MiB by default) whose request to its
/// worker would pass that, with the multipart framing the coordinator sends, is refused 413.
#[test]
fn a_submit_whose_request_to_its_worker_would_pass_100_mib_is_refused_with_413() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--upload-memory-bytes", "0"]);
    let big = Form::new()
        .file("main.py", "text/x-python", MAIN_PY)
        .file(
            "data.bin",
            "application/octet-stream",
            &vec![7u8; (100 << 20) - 1000],
        )
        .manifest(MANIFEST);
    let reply = post_submit(&coordinator, Some(&big.content_type()), &big.body());
    assert_refused(
        &coordinator,
        "over sandrun's request limit",
        &reply,
        413,
        "more than the 104857600 bytes a sandrun worker takes in one request",
    );
    assert_eq!(worker.recording().jobs.len(), 0);
    assert_nothing_queued_then_a_good_job_runs(&coordinator, &worker);
}

/// Stock tiny_http 0.12 drains an unread request body on drop with `vec![0; remaining]`, sized by
/// the client's `Content-Length` (on any route): a body that claims a terabyte aborted the
/// coordinator. The vendored, patched tiny_http (vendor/tiny_http/PATCH.md) drains through a fixed
/// buffer; this guards that fix.
#[test]
fn a_terabyte_content_length_is_refused_and_the_coordinator_lives_on() {
    let (worker, mut coordinator) = start();
    let form = good_form();
    let head = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nContent-Length: 1000000000000\r\n",
        form.content_type()
    );
    let reply = exchange(coordinator.port(), &head, &form.body()).unwrap_or_else(|e| panic!("{e}"));
    assert_refused(&coordinator, "a terabyte", &reply, 413, "limit of");
    // A length past 64 bits is too large as well, not "no decimal number".
    let head = head.replace("1000000000000", "99999999999999999999999999");
    let reply = exchange(coordinator.port(), &head, &form.body()).unwrap_or_else(|e| panic!("{e}"));
    assert_refused(
        &coordinator,
        "past 64 bits",
        &reply,
        413,
        "the Content-Length is larger than any request body this server takes",
    );
    let died = poll_until(Duration::from_secs(2), || {
        (!coordinator.is_running()).then_some(())
    });
    assert!(
        died.is_none(),
        "the coordinator died: {}",
        coordinator.logs()
    );
    assert_nothing_queued_then_a_good_job_runs(&coordinator, &worker);
}

#[test]
fn a_submit_is_held_to_max_files_and_odd_part_headers_are_named() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--max-files", "3"]);
    let files = |n: usize| {
        (1..n).fold(good_form(), |form, i| {
            form.file(&format!("data{i}.txt"), "text/plain", b"x")
        })
    };
    let four = files(4);
    let reply = post_submit(&coordinator, Some(&four.content_type()), &four.body());
    assert_refused(
        &coordinator,
        "four files",
        &reply,
        413,
        "more than 3 files (--max-files)",
    );

    let part = |disposition: &[u8]| {
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"".to_vec();
        body.extend_from_slice(disposition);
        body.extend_from_slice(b"\"\r\n\r\nx\r\n--XyZ--\r\n");
        body
    };
    let form_of = |boundary: &str| format!("multipart/form-data; boundary={boundary}");
    let cases: [(&str, String, Vec<u8>, &str); 4] = [
        (
            "a 10,000-byte filename",
            form_of("XyZ"),
            part(&[b'a'; 10_000]),
            "a part's headers are too large",
        ),
        (
            "a filename that is not UTF-8",
            form_of("XyZ"),
            part(b"\xff\xfe.py"),
            "a part's headers are not UTF-8",
        ),
        (
            "a 201-character boundary",
            form_of(&"b".repeat(201)),
            good_form().body(),
            "boundary is 201 characters long",
        ),
        // The first was read; a proxy may read the other.
        (
            "two boundary parameters",
            format!("{}; boundary=Other", good_form().content_type()),
            good_form().body(),
            "more than one boundary parameter",
        ),
    ];
    for (case, content_type, body, needle) in cases {
        let reply = post_submit(&coordinator, Some(&content_type), &body);
        assert_refused(&coordinator, case, &reply, 400, needle);
    }
    let form = good_form();
    let head = format!(
        "POST /submit HTTP/1.1\r\nContent-Type: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        form.content_type(),
        form_of("Other"),
        form.body().len()
    );
    let reply = exchange(coordinator.port(), &head, &form.body()).unwrap_or_else(|e| panic!("{e}"));
    assert_refused(
        &coordinator,
        "two Content-Type headers",
        &reply,
        400,
        "more than one Content-Type header",
    );

    let three = files(3);
    let reply = post_submit(&coordinator, Some(&three.content_type()), &three.body());
    let (_, job) = first_job_sent(&coordinator, &worker, &reply, "three files");
    let names: Vec<_> = job.files.iter().map(|f| f.filename.as_str()).collect();
    assert_eq!(names, ["main.py", "data1.txt", "data2.txt"]);
}

/// An option's part is read whole: one longer than its limit is refused naming the part and the
/// limit, never cut to its first bytes (`high` and 12 spaces then `GARBAGE` was taken as high).
#[test]
fn an_option_part_longer_than_its_limit_is_refused_not_cut() {
    let (worker, coordinator) = start();
    let main_py = || Form::new().file("main.py", "text/x-python", MAIN_PY);
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "priority",
            b"high            GARBAGE",
            "the 'priority' part is longer than 16 bytes",
        ),
        (
            "reruns",
            b"1               000000",
            "the 'reruns' part is longer than 16 bytes",
        ),
        (
            "queue_timeout",
            &[b'9'; 33],
            "the 'queue_timeout' part is longer than 32 bytes",
        ),
        (
            "priority",
            b"\xffhigh",
            "the 'priority' part is not UTF-8 text",
        ),
    ];
    for (name, value, needle) in cases {
        let form = main_py().field(name, value);
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_refused(&coordinator, name, &reply, 400, needle);
    }
    let at_limit = main_py().field("priority", b"high            ");
    let reply = post_submit(
        &coordinator,
        Some(&at_limit.content_type()),
        &at_limit.body(),
    );
    let (id, _) = first_job_sent(&coordinator, &worker, &reply, "a priority of 16 bytes");
    let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
    assert_eq!(status["priority"], "high", "{status}");
}

/// A part whose headers the parser refuses is told what is wrong with them and how to send
/// them: the parser's own texts said "description() is deprecated" for a Content-Disposition
/// that is missing or not form-data, and blamed a fifth header line on control characters.
#[test]
fn odd_part_headers_are_told_how_to_fix() {
    let (worker, coordinator) = start();
    let file_headers = "Content-Disposition: form-data; name=\"files\"; filename=\"main.py\"";
    let cases: [(&str, String, &str); 5] = [
        (
            "not form-data",
            "Content-Disposition: attachment; name=\"files\"; filename=\"main.py\"".to_string(),
            "Content-Disposition is \"attachment\", not form-data; begin each part with",
        ),
        (
            "no Content-Disposition",
            "Content-Type: text/plain".to_string(),
            "a part has no Content-Disposition header; begin each part with",
        ),
        (
            "no name",
            "Content-Disposition: form-data".to_string(),
            "a part's Content-Disposition has no name; give it as form-data; name=",
        ),
        (
            "five header lines",
            format!("{file_headers}\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1"),
            "a part carries more than 4 header lines; send Content-Disposition and Content-Type only",
        ),
        (
            "a Content-Type that is no media type",
            format!("{file_headers}\r\nContent-Type: /"),
            "a part's Content-Type \"/\" is not a media type",
        ),
    ];
    refuse_part_headers(&coordinator, &cases);
    assert_nothing_queued_then_a_good_job_runs(&coordinator, &worker);
}

/// A part's Content-Disposition is read as the standards (and so a proxy, or the worker) read
/// it: parameters in any order and case, values quoted or not, a `;` inside quotes part of the
/// value. The parser took the first `name=` it found, inside `filename=` too, so a file sent as
/// `filename="manifest"; name="files"` became the job's manifest; a quoted `;` cut a filename
/// short; a repeated parameter or header was taken first-wins. What readers may take
/// differently is refused, saying what to send: among it RFC 2231 pieces and encoded words,
/// which Go's `mime.ParseMediaType`, Werkzeug or Python's email package join or decode.
#[test]
fn a_parts_content_disposition_is_read_as_the_standards_read_it() {
    let (worker, coordinator) = start();
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let manifest = "Content-Disposition: form-data; name=\"manifest\"";
    let accepted: [(&str, &str, &str); 4] = [
        (
            "filename before name",
            "Content-Disposition: form-data; filename=\"main.py\"; name=\"files\"",
            "main.py",
        ),
        (
            "names in capitals, values unquoted",
            "Content-Disposition: FORM-DATA; NAME=files; FileName=main.py",
            "main.py",
        ),
        (
            "a quoted ';'",
            "Content-Disposition: form-data; name=\"files\"; filename=\"a;b.py\"",
            "a;b.py",
        ),
        (
            "a file named manifest",
            "Content-Disposition: form-data; filename=\"manifest\"; name=\"files\"",
            "manifest",
        ),
    ];
    for (case, headers, name) in accepted {
        let form = Form::new().raw_part(headers, MAIN_PY).raw_part(
            manifest,
            format!("{{\"entrypoint\": \"{name}\"}}").as_bytes(),
        );
        let reply = post_submit(&coordinator, Some(&form.content_type()), &form.body());
        assert_eq!(reply.status, 200, "{case}: {}", reply.text());
        let id = reply.json()["job_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let status = wait_collected(&coordinator, &id, DEADLINE);
        assert_eq!(status["files"][0]["filename"], name, "{case}: {status}");
        assert_eq!(status["files"].as_array().map(Vec::len), Some(1), "{case}");
    }
    let sent = worker.recording().jobs;
    assert_eq!(sent.len(), 4);
    let file = "Content-Disposition: form-data; name=\"files\"; filename=\"main.py\"";
    let refused: [(&str, String, &str); 11] = [
        (
            "two filenames",
            "Content-Disposition: form-data; name=\"files\"; filename=\"a.py\"; filename=\"b.py\""
                .to_string(),
            "(a parameter given twice: filename); give it as form-data; name=\"files\"",
        ),
        (
            "two names",
            "Content-Disposition: form-data; name=\"files\"; name=\"manifest\"".to_string(),
            "(a parameter given twice: name)",
        ),
        (
            "a backslash in quotes",
            "Content-Disposition: form-data; name=\"files\"; filename=\"a\\\"; name=\"x\""
                .to_string(),
            "(a backslash in a quoted value: a\\)",
        ),
        (
            "filename*",
            "Content-Disposition: form-data; name=\"files\"; filename*=UTF-8''main.py".to_string(),
            "(parameters with a * (RFC 2231, RFC 5987) are not taken (RFC 7578), give name= and filename=: filename*)",
        ),
        (
            "name* after a name",
            format!("{file}; name*=UTF-8''manifest"),
            "(parameters with a * (RFC 2231, RFC 5987) are not taken (RFC 7578), give name= and filename=: name*)",
        ),
        (
            "a filename in RFC 2231 pieces",
            format!("{file}; filename*0=\"evil.tar.gz\""),
            "are not taken (RFC 7578), give name= and filename=: filename*0)",
        ),
        (
            "an encoded word",
            "Content-Disposition: form-data; name=\"files\"; filename=\"=?utf-8?q?evil=2Etar=2Egz?=\""
                .to_string(),
            "(an encoded word (RFC 2047) in a value: =?utf-8?q?evil=2Etar=2Egz?=)",
        ),
        (
            "a space around =",
            "Content-Disposition: form-data; name=\"files\"; filename = \"main.py\"".to_string(),
            "(expected parameter=value (no space around =), got:",
        ),
        (
            "no closing quote",
            "Content-Disposition: form-data; name=\"files\"; filename=\"main.py".to_string(),
            "(a quoted value without its closing quote",
        ),
        (
            "two Content-Dispositions",
            format!("{file}\r\nContent-Disposition: form-data; name=\"manifest\""),
            "a part carries more than one Content-Disposition header (readers differ on which counts); send one",
        ),
        (
            "two Content-Types",
            format!("{file}\r\nContent-Type: text/plain\r\nContent-Type: text/x-python"),
            "a part carries more than one Content-Type header",
        ),
    ];
    refuse_part_headers(&coordinator, &refused);
    assert_eq!(
        worker.recording().jobs.len(),
        4,
        "a refused submit was sent"
    );
}
