//! The calls sandrun's own clients make, written here from reading them (sandrun's repository:
//! `integrations/python-client/sandrun_client.py`, `integrations/mcp-server/sandrun_mcp.py`,
//! `integrations/web-frontend/app.js`): the same paths, methods, multipart parts in the same
//! order, and the same reading of each answer (the fields they index, the statuses they check).
//! Each call runs against any base URL: a sandrun worker directly or a coordinator.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{send, Reply};
use super::form::Form;
use super::util::{poll_until, temp_dir};

/// How long a test waits for a job to finish.
const WAIT: Duration = Duration::from_secs(60);

/// A sandrun client pointed at one base URL.
pub struct SandrunClient {
    base: String,
}

/// What a client call failed on (the Python client's `raise_for_status`, a missing key...).
pub type CallResult<T> = Result<T, String>;

fn ok(reply: Reply, what: &str) -> CallResult<Reply> {
    if reply.status >= 400 {
        return Err(format!("{what}: HTTP {} {}", reply.status, reply.text()));
    }
    Ok(reply)
}

/// A gzip tarball of one file, as `submit_code` builds it (a single member, no directory).
pub fn one_file_tarball(name: &str, content: &[u8]) -> Vec<u8> {
    let dir = temp_dir();
    fs::write(dir.path().join(name), content).unwrap_or_else(|e| panic!("write {name}: {e}"));
    tar_czf(dir.path(), &[name])
}

/// A gzip tarball of a directory with `arcname='.'`, as `submit_directory` builds it.
pub fn directory_tarball(dir: &Path) -> Vec<u8> {
    tar_czf(dir, &["."])
}

fn tar_czf(dir: &Path, members: &[&str]) -> Vec<u8> {
    let out = temp_dir();
    let archive = out.path().join("job.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .args(members)
        .status()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(status.success(), "tar -czf failed: {status}");
    fs::read(&archive).unwrap_or_else(|e| panic!("cannot read the tarball: {e}"))
}

impl SandrunClient {
    /// A client of the sandrun API at `base` (`http://host:port`).
    pub fn new(base: &str) -> SandrunClient {
        SandrunClient {
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn get(&self, path: &str) -> CallResult<Reply> {
        send("GET", &format!("{}{path}", self.base), None)
    }

    fn post_form(&self, form: &Form) -> CallResult<Reply> {
        let body = form.body();
        send(
            "POST",
            &format!("{}/submit", self.base),
            Some((&form.content_type(), &body)),
        )
    }

    /// `test_connection`: `GET` the base URL; true when its JSON says `service: sandrun`.
    pub fn test_connection(&self) -> bool {
        self.get("")
            .map(|reply| reply.json()["service"] == "sandrun")
            .unwrap_or(false)
    }

    fn submit(&self, form: &Form) -> CallResult<String> {
        let reply = ok(self.post_form(form)?, "submit")?;
        reply.json()["job_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("KeyError: 'job_id' in {}", reply.text()))
    }

    /// `submit_code`: the code as `main.<ext>` in a one-file tarball, the manifest as a form
    /// field (the Python client's `data=` fields come before its `files=`).
    pub fn submit_code(&self, code: &str, interpreter: &str) -> CallResult<String> {
        let ext = match interpreter {
            "python3" | "python" => "py",
            "node" => "js",
            "bash" | "sh" => "sh",
            _ => "txt",
        };
        let filename = format!("main.{ext}");
        let manifest = json!({"entrypoint": filename, "interpreter": interpreter});
        let form = Form::new().manifest(&manifest.to_string()).file(
            "job.tar.gz",
            "application/gzip",
            &one_file_tarball(&filename, code.as_bytes()),
        );
        self.submit(&form)
    }

    /// `submit_directory`: the directory as a tarball (`arcname='.'`) and a manifest with
    /// `timeout`, `memory_mb` and the optional `args` and `outputs`.
    pub fn submit_directory(
        &self,
        dir: &Path,
        entrypoint: &str,
        args: &[&str],
        outputs: &[&str],
    ) -> CallResult<String> {
        let mut manifest = json!({"entrypoint": entrypoint, "interpreter": "python3",
                                  "timeout": 300, "memory_mb": 512});
        if !args.is_empty() {
            manifest["args"] = json!(args);
        }
        if !outputs.is_empty() {
            manifest["outputs"] = json!(outputs);
        }
        let form = Form::new().manifest(&manifest.to_string()).file(
            "job.tar.gz",
            "application/gzip",
            &directory_tarball(dir),
        );
        self.submit(&form)
    }

    /// `get_status`.
    pub fn get_status(&self, id: &str) -> CallResult<Value> {
        Ok(ok(self.get(&format!("/status/{id}"))?, "status")?.json())
    }

    /// `wait_for_completion`: polls until `status['status']` is `completed` or `failed` (a
    /// missing `status` key is the `KeyError` the Python client would raise).
    pub fn wait_for_completion(&self, id: &str) -> CallResult<Value> {
        let mut last: CallResult<Value> = Err("never polled".to_string());
        poll_until(WAIT, || {
            last = self
                .get_status(id)
                .and_then(|s| match s["status"].as_str() {
                    Some(_) => Ok(s),
                    None => Err(format!("KeyError: 'status' in {s}")),
                });
            match &last {
                Ok(s) if s["status"] == "completed" || s["status"] == "failed" => Some(()),
                Ok(_) => None,
                Err(_) => Some(()),
            }
        });
        last
    }

    /// `get_logs`.
    pub fn get_logs(&self, id: &str) -> CallResult<Value> {
        Ok(ok(self.get(&format!("/logs/{id}"))?, "logs")?.json())
    }

    /// `list_outputs`: the `files` list of the listing.
    pub fn list_outputs(&self, id: &str) -> CallResult<Vec<Value>> {
        let listing = ok(self.get(&format!("/outputs/{id}"))?, "outputs")?.json();
        Ok(listing["files"].as_array().cloned().unwrap_or_default())
    }

    /// `download_file`: `GET /download/{id}/{filename}`, the bytes.
    pub fn download_file(&self, id: &str, filename: &str) -> CallResult<Vec<u8>> {
        Ok(ok(self.get(&format!("/download/{id}/{filename}"))?, "download")?.body)
    }

    /// The MCP server's `submit_job`: a file `job.tar.gz` whose body is its "fake tar" text
    /// (not a tarball), with no content type of its own (httpx guesses `application/x-tar`),
    /// then the manifest field.
    pub fn mcp_submit(&self, code: &str, interpreter: &str) -> CallResult<Value> {
        let ext = if interpreter == "node" { "js" } else { "py" };
        let fake_tar = format!("----Tar\nPath: main.{ext}\nSize: {}\n\n{code}", code.len());
        let manifest = json!({"entrypoint": format!("main.{ext}"), "interpreter": interpreter});
        let form = Form::new().manifest(&manifest.to_string()).file(
            "job.tar.gz",
            "application/x-tar",
            fake_tar.as_bytes(),
        );
        Ok(ok(self.post_form(&form)?, "submit")?.json())
    }

    /// The MCP server's `wait_for_completion`: any `error` key in a status answer ends the wait
    /// as an error (even `"error": null`); else `status` in completed/failed, then the logs.
    pub fn mcp_wait(&self, id: &str) -> CallResult<Value> {
        let mut outcome: CallResult<Value> = Err("timeout waiting for job completion".into());
        poll_until(WAIT, || {
            let status = match self.get(&format!("/status/{id}")) {
                Ok(reply) => reply.json(),
                Err(e) => {
                    outcome = Err(e);
                    return Some(());
                }
            };
            if let Some(error) = status.get("error") {
                outcome = Err(format!("error: {error}"));
                return Some(());
            }
            let state = match status["status"].as_str() {
                Some(s) => s.to_string(),
                None => {
                    outcome = Err(format!("KeyError: 'status' in {status}"));
                    return Some(());
                }
            };
            if state != "completed" && state != "failed" {
                return None;
            }
            outcome = self.get(&format!("/logs/{id}")).map(|logs| {
                let logs = logs.json();
                json!({"status": state, "stdout": logs["stdout"], "stderr": logs["stderr"],
                       "queue_position": status["queue_position"]})
            });
            Some(())
        });
        outcome
    }
}
