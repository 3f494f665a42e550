//! Network slot allocation (needs root): how long one sandbox network
//! (namespace, veth pair, addresses, routes) takes to build over netlink
//! when the pool is empty, beside the same work done by `ip` commands in
//! the same run. Prints p50/p95 and the ratio; asserts nothing.
//!
//! `cargo bench -p atoll-runner --bench network_slots [-- N]`

use atoll_runner::network::{Cidr, Network, NetworkConfig};
use std::process::Command;
use std::time::Instant;

fn pct(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let i = ((xs.len() as f64 - 1.0) * p / 100.0).round() as usize;
    xs[i]
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("network_slots: needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("atoll-net-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let instance = "be4c40000001";
    let cfg = NetworkConfig {
        block: Some(Cidr::parse("10.213.248.0/22").expect("cidr")),
        lock_dir: dir.join("locks"),
        pool_size: 0,
        allow_private: false,
        max_connections: 0,
    };
    let net = Network::start(&cfg, instance, &dir, &[]).expect("network");
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let slot = net.take().expect("slot");
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        let ip = slot.ip;
        drop(slot);
        net.release(ip).expect("release");
    }
    drop(net);
    atoll_runner::network::drop_table(instance);

    // The same slot with iproute2: named namespace, veth into it, gateway
    // and route on the host, address, links and default route inside.
    let runs = n.min(40);
    let mut shell = Vec::with_capacity(runs);
    for i in 0..runs {
        let ns = format!("atoll-bench-{i}");
        let host = format!("atlbench{i}");
        let t = Instant::now();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", "10.213.244.1/32", "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&["route", "add", "10.213.244.2/32", "dev", &host]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", "10.213.244.2/32", "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            "10.213.244.1",
            "dev",
            "eth0",
            "onlink",
        ]);
        shell.push(t.elapsed().as_secs_f64() * 1e3);
        ip(&["netns", "del", &ns]);
        // Wait for the namespace's veth to go before reusing its name.
        while std::path::Path::new(&format!("/sys/class/net/{host}")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (o50, o95) = (pct(&mut ours, 50.0), pct(&mut ours, 95.0));
    let (s50, s95) = (pct(&mut shell, 50.0), pct(&mut shell, 95.0));
    println!("network slot allocation ({n} slots, pool empty: built on demand)");
    println!("  netlink (atoll)          p50 {o50:7.3} ms   p95 {o95:7.3} ms");
    println!("baseline, same run ({runs} slots):");
    println!("  9 `ip` commands          p50 {s50:7.3} ms   p95 {s95:7.3} ms");
    println!("ratio (p50): atoll / ip  {:6.3}x", o50 / s50);
}
