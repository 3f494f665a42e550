//! Copies the browser code the web terminal serves (xterm.js, vendored
//! from npm into `web/node_modules` by `scripts/setup.sh`) into OUT_DIR for
//! `include_bytes!`. Without it (a bare `cargo build` before setup), the
//! terminal page says how to get it instead of loading a terminal.

use std::path::Path;

const FILES: &[(&str, &str)] = &[
    ("@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("@xterm/xterm/css/xterm.css", "xterm.css"),
    ("@xterm/addon-fit/lib/addon-fit.js", "addon-fit.js"),
];

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/node_modules");
    let mut missing = false;
    for (from, to) in FILES {
        let src = modules.join(from);
        println!("cargo:rerun-if-changed={}", src.display());
        let body = match std::fs::read(&src) {
            Ok(b) => b,
            Err(_) => {
                missing = true;
                Vec::new()
            }
        };
        std::fs::write(Path::new(&out).join(to), body).expect("writing to OUT_DIR");
    }
    let flag = if missing { "false" } else { "true" };
    std::fs::write(
        Path::new(&out).join("xterm_vendored.rs"),
        format!("pub const XTERM_VENDORED: bool = {flag};\n"),
    )
    .expect("writing to OUT_DIR");
    if missing {
        println!(
            "cargo:warning=web/node_modules has no xterm.js: the web terminal will not work (run scripts/setup.sh, or npm ci --prefix web)"
        );
    }
}
