//! A three-node Redis Cluster on loopback (no replicas), started by the
//! test that needs it and killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Cluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| super::free_port()).collect();
        let nodes = ports
            .iter()
            .map(|port| {
                Command::new("redis-server")
                    .args([
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                        "--cluster-enabled",
                        "yes",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server (installed by scripts/stack up)")
            })
            .collect();
        let cluster = Cluster {
            nodes,
            ports,
            _dir: dir,
        };
        for port in &cluster.ports {
            cluster.wait_for(*port, &["PING"], "PONG");
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster create failed");
        for port in &cluster.ports {
            cluster.wait_for(*port, &["CLUSTER", "INFO"], "cluster_state:ok");
        }
        cluster
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn wait_for(&self, port: u16, args: &[&str], expect: &str) {
        for _ in 0..100 {
            if self.cli(port, args).contains(expect) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis node {port}: {args:?} never answered {expect:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}
