//! The Python client's pytest suite (`clients/python/tests`), run against the binary this
//! build made, so that `cargo test --workspace` covers the Python client too.
//!
//! The suite starts its own clusters on free 127.0.0.1 ports. It needs a Python 3.9+ with
//! `httpx`, `pytest` and `pytest-asyncio`: `$SINKRON_PYTHON` (CI points it at a virtual
//! environment), else `python3`. Where those are missing, the test prints a loud SKIPPED
//! line with the command that installs them, and passes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> String {
    std::env::var("SINKRON_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `python` can import what the suite needs; the reason when it cannot.
fn missing_modules(python: &str) -> Option<String> {
    let probe = Command::new(python)
        .args(["-c", "import sys; assert sys.version_info >= (3, 9), sys.version; import httpx, pytest, pytest_asyncio"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Err(e) => Some(format!("{python}: {e}")),
        Ok(out) if !out.status.success() => {
            Some(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_string())
        }
        Ok(_) => None,
    }
}

#[test]
fn python_client_suite() {
    let python = python();
    if let Some(reason) = missing_modules(&python) {
        eprintln!(
            "SKIPPED python_client_suite: {reason}. Install with: \
             python3 -m pip install httpx pytest pytest-asyncio (or set SINKRON_PYTHON)"
        );
        if std::env::var_os("SINKRON_PYTHON").is_some() {
            panic!("SINKRON_PYTHON is set, but it cannot run the suite: {reason}");
        }
        return;
    }
    let client_dir = repo().join("clients/python");
    let mut child = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&client_dir)
        // The package from this checkout, not whatever version is installed.
        .env("PYTHONPATH", client_dir.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SINKRON_BIN", env!("CARGO_BIN_EXE_sinkron"))
        .spawn()
        .expect("start pytest");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pytest") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Python client suite did not finish within 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the Python client suite failed ({status}); its output is above");
}
