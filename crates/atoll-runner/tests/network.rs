//! The sandbox network against the real kernel (needs root): a slot is a
//! namespace whose eth0 has its address and a default route, the host has
//! the /32 route to it, and policies appear in and leave the firewall sets.

use atoll_runner::network::{Cidr, Network, NetworkConfig, NetworkPolicy};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("atoll-net-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn nft_set(table: &str, set: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "set", "inet", table, set])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `f` on a thread inside the namespace `ns` (which reads
/// `/proc/thread-self/net`: `/proc/net` is the main thread's).
fn inside<T: Send>(ns: &std::os::fd::OwnedFd, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn slots_are_routed_and_policies_reach_the_firewall() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = scratch("slots");
    let instance = "7e57ab000001";
    let block = Cidr::parse("10.213.252.0/28").unwrap();
    let cfg = NetworkConfig {
        block: Some(block),
        lock_dir: dir.join("locks"),
        pool_size: 1,
        allow_private: false,
        max_connections: 0,
    };
    // A runner that died with nothing running left its table behind.
    let stale = "table inet atoll_0dead0000001 {\n  chain c {\n    type filter hook forward priority 0;\n  }\n}\n";
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(stale.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());
    // A live runner with nothing running and no pool has no veth at all:
    // its lock still keeps its table.
    let idle_cfg = NetworkConfig {
        block: Some(Cidr::parse("10.213.252.16/28").unwrap()),
        lock_dir: dir.join("locks"),
        pool_size: 0,
        allow_private: false,
        max_connections: 0,
    };
    std::fs::create_dir_all(dir.join("idle")).unwrap();
    std::fs::create_dir_all(dir.join("other")).unwrap();
    let idle = Network::start(&idle_cfg, "7e57ab000003", &dir.join("idle"), &[]).unwrap();
    let net = Network::start(&cfg, instance, &dir, &[]).unwrap();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("atoll_0dead0000001"), "{tables}");
    assert!(tables.contains(&format!("atoll_{instance}")), "{tables}");
    assert!(tables.contains("atoll_7e57ab000003"), "{tables}");
    drop(idle);
    atoll_runner::network::drop_table("7e57ab000003");
    // A second runner cannot take the same block.
    let taken = Network::start(&cfg, "7e57ab000002", &dir.join("other"), &[]);
    assert!(
        matches!(
            taken,
            Err(atoll_runner::network::NetworkError::BlockInUse(_))
        ),
        "{:?}",
        taken.err()
    );

    // Nor a block overlapping it, whatever its size.
    let wider = NetworkConfig {
        block: Some(Cidr::parse("10.213.252.0/27").unwrap()),
        ..cfg.clone()
    };
    let taken = Network::start(&wider, "7e57ab000002", &dir.join("other"), &[]);
    assert!(
        matches!(
            taken,
            Err(atoll_runner::network::NetworkError::BlockInUse(_))
        ),
        "{:?}",
        taken.err()
    );

    let slot = net.take().unwrap();
    assert!(block.contains(slot.ip));
    assert!(slot.host_if.starts_with("atl7e57ab"));
    let routes = std::fs::read_to_string("/proc/net/route").unwrap();
    assert!(
        routes.lines().any(|l| l.starts_with(&slot.host_if)),
        "{routes}"
    );

    let (addrs, route, inet6) = inside(&slot.ns, || {
        (
            std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap(),
            std::fs::read_to_string("/proc/thread-self/net/route").unwrap(),
            std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap_or_default(),
        )
    });
    // IPv4 only, on both ends of the veth.
    assert!(!inet6.contains("eth0"), "{inet6}");
    let host_v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", slot.host_if);
    assert_eq!(std::fs::read_to_string(host_v6).unwrap().trim(), "1");
    assert!(addrs.contains(&slot.ip.to_string()), "{addrs}");
    // The default route (destination 0) goes out of eth0.
    assert!(
        route.lines().any(|l| l.starts_with("eth0\t00000000")),
        "{route}"
    );

    let table = format!("atoll_{instance}");
    let allow = NetworkPolicy {
        block_all: false,
        allow_list: NetworkPolicy::parse_allow_list("198.51.100.0/24").unwrap(),
    };
    net.apply(slot.ip, &allow).unwrap();
    assert!(nft_set(&table, "limited").contains(&slot.ip.to_string()));
    assert!(nft_set(&table, "allowed").contains("198.51.100.0/24"));
    let block_all = NetworkPolicy {
        block_all: true,
        allow_list: None,
    };
    net.apply(slot.ip, &block_all).unwrap();
    assert!(nft_set(&table, "blocked").contains(&slot.ip.to_string()));
    assert!(!nft_set(&table, "limited").contains(&slot.ip.to_string()));
    assert!(!nft_set(&table, "allowed").contains("198.51.100.0/24"));
    // Someone removes the table: the runner puts it back, with the policy.
    let deleted = Command::new("nft")
        .args(["delete", "table", "inet", &table])
        .status()
        .unwrap();
    assert!(deleted.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !nft_set(&table, "blocked").contains(&slot.ip.to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the table did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Someone removes an element: the next change still lands, whole.
    let removed = Command::new("nft")
        .args([
            "delete",
            "element",
            "inet",
            &table,
            "blocked",
            &format!("{{ {} }}", slot.ip),
        ])
        .status()
        .unwrap();
    assert!(removed.success());
    net.apply(slot.ip, &allow).unwrap();
    assert!(nft_set(&table, "limited").contains(&slot.ip.to_string()));
    assert!(nft_set(&table, "allowed").contains("198.51.100.0/24"));
    net.release(slot.ip).unwrap();
    assert!(!nft_set(&table, "blocked").contains(&slot.ip.to_string()));
    assert!(!nft_set(&table, "limited").contains(&slot.ip.to_string()));
    // Its veth goes with the release, so the address is reusable at once.
    let veth = format!("/sys/class/net/{}", slot.host_if);
    assert!(!std::path::Path::new(&veth).exists(), "{veth}");
    drop(slot);

    drop(net);
    atoll_runner::network::drop_table(instance);

    // A /28 holds 13 sandboxes; past that a take fails at once, and so
    // does the capacity check, until an address comes back.
    let small = NetworkConfig {
        block: Some(Cidr::parse("10.213.252.32/28").unwrap()),
        lock_dir: dir.join("locks"),
        pool_size: 0,
        allow_private: false,
        max_connections: 0,
    };
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let net = Network::start(&small, "5a1100000005", &dir.join("small"), &[]).unwrap();
    let mut held: Vec<_> = (0..13).map(|_| net.take().unwrap()).collect();
    let full = net.take().err().unwrap();
    assert!(
        matches!(
            full,
            atoll_runner::network::NetworkError::Full { capacity: 13, .. }
        ),
        "{full}"
    );
    assert!(full.to_string().contains("network is full"), "{full}");
    assert!(net.check_capacity().is_err());
    let back = held.pop().unwrap();
    net.release(back.ip).unwrap();
    net.check_capacity().unwrap();
    assert_eq!(net.take().unwrap().ip, back.ip);
    drop(held);
    drop(net);
    atoll_runner::network::drop_table("5a1100000005");
    let _ = std::fs::remove_dir_all(&dir);
}
