//! A fake Coder server on 127.0.0.1 for entrypoint tests.
//!
//! It serves `<prefix>/bin/coder-linux-<arch>` as a small POSIX sh "agent" and collects the
//! reports that agent POSTs to `<prefix>/report`. Faults: the first N binary downloads can
//! answer 503 or a body that is not a working binary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The fake agent. `--version` prints a Coder-like line; `agent` reports what it received
/// (argv, ids, cwd, env, token and how the token arrived) and waits for SIGTERM, which it
/// reports too. The report body is written to a file and posted from it, so the token never
/// appears on a command line. At start it leaves an orphan behind, to check that PID 1 reaps.
pub const FAKE_AGENT: &str = r#"#!/bin/sh
# Fake coder binary for hakim entrypoint tests.
case "${1-}" in
--version | version)
	echo "Coder v2.99.0-hakimfake+0000000 Mon Nov 30 00:00:00 UTC 2026"
	exit 0
	;;
agent) ;;
*)
	echo "fake coder: unsupported arguments: $*" >&2
	exit 2
	;;
esac
base=${CODER_AGENT_URL%/}
body=$(mktemp "${TMPDIR:-/tmp}/fake-agent.XXXXXX")
post() {
	if command -v curl >/dev/null 2>&1 && [ -x "$(command -v curl)" ]; then
		curl -fsS --data-binary @"$body" "$base/report" >/dev/null
	elif command -v wget >/dev/null 2>&1 && [ -x "$(command -v wget)" ]; then
		wget -q -O /dev/null --post-file="$body" "$base/report"
	else
		busybox wget -q -O /dev/null --post-file="$body" "$base/report"
	fi
}
# A marker in $HOME makes this run crash once, to exercise the entrypoint's restart.
if [ -f "${HOME:-/nonexistent}/.fake-agent-crash" ]; then
	rm -f "$HOME/.fake-agent-crash"
	printf 'event=crash\n' >"$body"
	post
	exit 3
fi
if [ -n "${CODER_AGENT_TOKEN-}" ]; then
	token=$CODER_AGENT_TOKEN
	token_env=set
else
	token=$(cat "${CODER_AGENT_TOKEN_FILE:-/nonexistent}" 2>/dev/null)
	token_env=unset
fi
tf=${CODER_AGENT_TOKEN_FILE-}
{
	printf 'event=start\n'
	printf 'argv=%s\n' "$*"
	printf 'pid=%s\n' "$$"
	printf 'uid=%s\n' "$(id -u)"
	printf 'gid=%s\n' "$(id -g)"
	printf 'cwd=%s\n' "$PWD"
	printf 'home=%s\n' "${HOME-}"
	printf 'user=%s\n' "${USER-}"
	printf 'shell=%s\n' "${SHELL-}"
	printf 'path=%s\n' "${PATH-}"
	printf 'lang=%s\n' "${LANG-}"
	printf 'url=%s\n' "${CODER_AGENT_URL-}"
	printf 'auth=%s\n' "${CODER_AGENT_AUTH-}"
	printf 'token=%s\n' "$token"
	printf 'token_env=%s\n' "$token_env"
	printf 'bootstrap_env=%s\n' "${CODER_AGENT_BOOTSTRAP:+set}"
	printf 'token_file=%s\n' "$tf"
	if [ -n "$tf" ]; then
		printf 'token_file_mode=%s\n' "$(stat -c %a "$tf")"
		printf 'token_file_owner=%s\n' "$(stat -c %u "$tf")"
	fi
} >"$body"
trap 'printf "event=term\npid=%s\n" "$$" >"$body"; post; rm -f "$body"; exit 0' TERM
post
# An orphan that exits soon after: PID 1 must reap it.
sh -c 'sleep 1 &'
while :; do
	sleep 1 &
	wait $!
done
"#;

/// What the first downloads get instead of the agent.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// HTTP 503, as while the server restarts.
    Unavailable,
    /// HTTP 200 with an HTML page: a download that is not a working binary.
    NotABinary,
}

/// Options for [`FakeCoder::start`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Path prefix of the deployment, e.g. "/coder" (empty for none).
    pub prefix: String,
    /// How many binary downloads fail before the agent is served.
    pub fail_first: usize,
    /// How those downloads fail.
    pub failure: Failure,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: String::new(),
            fail_first: 0,
            failure: Failure::Unavailable,
        }
    }
}

/// One agent report: `key=value` lines.
pub type Report = BTreeMap<String, String>;

#[derive(Default)]
struct State {
    reports: Mutex<Vec<Report>>,
    cond: Condvar,
    downloads: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

/// A running fake Coder server; stops when dropped.
pub struct FakeCoder {
    port: u16,
    prefix: String,
    state: Arc<State>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCoder {
    /// Starts the server on a random 127.0.0.1 port.
    pub fn start(options: Options) -> FakeCoder {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server
            .server_addr()
            .to_ip()
            .expect("fake coder listens on IP")
            .port();
        let state = Arc::new(State::default());
        let thread = {
            let (server, state, options) = (server.clone(), state.clone(), options.clone());
            std::thread::spawn(move || serve(&server, &state, &options))
        };
        FakeCoder {
            port,
            prefix: options.prefix,
            state,
            server,
            thread: Some(thread),
        }
    }

    /// The access URL without a trailing slash, e.g. `http://127.0.0.1:PORT/coder`.
    pub fn access_url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.prefix)
    }

    /// How many binary downloads were requested (failed ones included).
    pub fn downloads(&self) -> usize {
        self.state.downloads.load(Ordering::SeqCst)
    }

    /// Every request seen so far as "METHOD PATH USER-AGENT".
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    /// All reports received so far.
    pub fn reports(&self) -> Vec<Report> {
        self.state.reports.lock().unwrap().clone()
    }

    /// Waits until a report with `event=<event>` arrives; `poll` runs between checks.
    pub fn wait_report(
        &self,
        event: &str,
        timeout: Duration,
        mut poll: impl FnMut(),
    ) -> Option<Report> {
        let deadline = Instant::now() + timeout;
        let mut reports = self.state.reports.lock().unwrap();
        loop {
            if let Some(r) = reports
                .iter()
                .find(|r| r.get("event").map(String::as_str) == Some(event))
            {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            reports = self.state.cond.wait_timeout(reports, step).unwrap().0;
            drop(reports);
            poll();
            reports = self.state.reports.lock().unwrap();
        }
    }
}

impl Drop for FakeCoder {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, state: &State, options: &Options) {
    let binaries: Vec<String> = ["amd64", "arm64", "armv7"]
        .iter()
        .map(|a| format!("{}/bin/coder-linux-{a}", options.prefix))
        .collect();
    let report = format!("{}/report", options.prefix);
    for mut request in server.incoming_requests() {
        let path = request.url().to_string();
        let agent = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("User-Agent"))
            .map(|h| h.value.to_string())
            .unwrap_or_default();
        state
            .paths
            .lock()
            .unwrap()
            .push(format!("{} {path} {agent}", request.method()));
        let response = if binaries.contains(&path) {
            let n = state.downloads.fetch_add(1, Ordering::SeqCst);
            // A slow link keeps the downloader alive long enough for tests that watch
            // command lines of running processes.
            std::thread::sleep(Duration::from_millis(150));
            if n < options.fail_first {
                match options.failure {
                    Failure::Unavailable => {
                        tiny_http::Response::from_string("server starting").with_status_code(503)
                    }
                    Failure::NotABinary => {
                        tiny_http::Response::from_string("<html><body>maintenance</body></html>\n")
                    }
                }
            } else {
                tiny_http::Response::from_string(FAKE_AGENT)
            }
        } else if path == report && *request.method() == tiny_http::Method::Post {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            let parsed: Report = body
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            state.reports.lock().unwrap().push(parsed);
            state.cond.notify_all();
            tiny_http::Response::from_string("ok")
        } else {
            tiny_http::Response::from_string("not found").with_status_code(404)
        };
        let _ = request.respond(response);
    }
}
