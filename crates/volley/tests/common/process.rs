//! Real servers from Debian packages (proxies, nginx) started by a test on a free
//! loopback port, in the foreground, with their files in a scratch directory; killed
//! and cleaned up when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Where the binaries the tests start come from.
pub const INSTALL_HINT: &str = "run `scripts/install-test-deps.sh proxies` to install it";

/// A server process, killed (and its files removed) when dropped. Start servers that
/// stay one process (no daemon, no worker processes), so that killing it stops all.
pub struct Process {
    pub name: &'static str,
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Process {
    /// Starts `name` with `args` (made from the port and the scratch directory) on a
    /// free port, and waits until it accepts connections.
    pub async fn start(name: &'static str, args: impl FnOnce(u16, &Path) -> Vec<String>) -> Process {
        let program = find_binary(name);
        let dir = scratch_dir(name);
        let port = free_port();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(&program)
            .args(args(port, &dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut process = Process { name, child, port, dir };
        process.wait_ready().await;
        process
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before accepting connections:\n{}", self.name, self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "{} does not listen on {}:\n{}", self.name, self.port, self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

/// `name` on PATH, or in /usr/bin or /usr/sbin; the test fails if it is nowhere.
pub fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/bin".into(), "/usr/sbin".into()]);
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed (not on PATH, /usr/bin or /usr/sbin): {INSTALL_HINT}");
}

/// A fresh directory for one process's configuration and logs.
fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("volley-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port that was free a moment ago (the process binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// tinyproxy in the foreground, allowing CONNECT to `target_port` only, with Basic
/// authentication if `auth` is given.
pub async fn tinyproxy(target_port: u16, auth: Option<(&str, &str)>) -> Process {
    Process::start("tinyproxy", |port, dir| {
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nConnectPort {target_port}\n\
             MaxClients 20\nLogLevel Info\n"
        );
        if let Some((user, pass)) = auth {
            config.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let path = dir.join("tinyproxy.conf");
        std::fs::write(&path, config).unwrap();
        vec!["-d".into(), "-c".into(), path.display().to_string()]
    })
    .await
}

/// microsocks, with username/password authentication if `auth` is given.
pub async fn microsocks(auth: Option<(&str, &str)>) -> Process {
    Process::start("microsocks", |port, _| {
        let mut args = vec!["-i".into(), "127.0.0.1".into(), "-p".into(), port.to_string()];
        if let Some((user, pass)) = auth {
            args.extend(["-u".into(), user.into(), "-P".into(), pass.into()]);
        }
        args
    })
    .await
}

/// nginx as one process in the foreground (no daemon, no worker processes) with
/// `server_block` as its only `server { … }` (`{port}` in it is replaced by nginx's
/// port); logs and temporary files stay in its scratch directory.
pub async fn nginx(server_block: &str) -> Process {
    let server_block = server_block.to_string();
    Process::start("nginx", move |port, dir| {
        let d = dir.display();
        let server_block = server_block.replace("{port}", &port.to_string());
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    {server_block}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        vec!["-e".into(), format!("{d}/error.log"), "-p".into(), d.to_string(), "-c".into(), path.display().to_string()]
    })
    .await
}
