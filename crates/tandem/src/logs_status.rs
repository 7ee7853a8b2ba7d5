//! `tandem logs status`: asks a running Tandem's admin API for `GET /logs` and prints it as
//! tables (or as the JSON served, with `--json`).
//!
//! The admin API listens on loopback or a Unix socket, so a plain HTTP/1.0 request over a
//! socket is all it takes; no client library.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use tandem_config::Address;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the command; exit 64 for a bad address or config, 1 when Tandem cannot be asked.
pub(crate) fn run(config: Option<&Path>, admin: Option<&str>, json: bool) -> ExitCode {
    let address = match admin_address(config, admin) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tandem logs status: {e}");
            return ExitCode::from(64);
        }
    };
    let (status, body) = match get(&address, "/logs") {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "tandem logs status: cannot reach the admin API at {address}: {e}\n  hint: is \
                 Tandem running? give its address with --admin or its file with -c"
            );
            return ExitCode::FAILURE;
        }
    };
    let doc: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tandem logs status: {address} answered {status} with no JSON ({e})");
            return ExitCode::FAILURE;
        }
    };
    if status != 200 {
        let why = doc["error"].as_str().unwrap_or("unexpected answer");
        eprintln!("tandem logs status: {address}: {why}");
        return ExitCode::FAILURE;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render(&doc));
    }
    ExitCode::SUCCESS
}

fn admin_address(config: Option<&Path>, admin: Option<&str>) -> Result<Address, String> {
    if let Some(a) = admin {
        return a
            .parse::<Address>()
            .map_err(|e| format!("--admin {a}: {e}"));
    }
    let config = match config {
        Some(p) => tandem_config::load_file(p).map_err(|e| e.to_string())?,
        None => tandem_config::default_config(),
    };
    Ok(config.admin.address)
}

/// One `GET` over HTTP/1.0: the status and the body.
fn get(address: &Address, path: &str) -> std::io::Result<(u16, String)> {
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: tandem\r\nAccept: application/json\r\n\r\n");
    let mut raw = Vec::new();
    match address {
        Address::Tcp(sa) => {
            let mut s = std::net::TcpStream::connect_timeout(sa, TIMEOUT)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Address::Host { host, port } => {
            let mut s = std::net::TcpStream::connect((host.as_str(), *port))?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
        Address::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            s.read_to_end(&mut raw)?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// The status document as aligned tables.
fn render(doc: &Value) -> String {
    let mut out = String::new();
    let mut files = vec![row(&[
        "SOURCE",
        "FILE",
        "SIZE",
        "READ",
        "CHECKPOINTED",
        "LAG",
        "CHECKPOINT AGE",
    ])];
    let mut streams = vec![row(&[
        "SOURCE",
        "TYPE",
        "LINES",
        "SPILLED",
        "DROPPED",
        "DISK BUFFER",
        "SEGMENTS",
    ])];
    for s in doc["sources"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        for f in s["files"].as_array().into_iter().flatten() {
            files.push(vec![
                name.to_owned(),
                f["path"].as_str().unwrap_or("?").to_owned(),
                num(&f["size"]),
                num(&f["read_offset"]),
                num(&f["checkpointed_offset"]),
                num(&f["lag_bytes"]),
                format!("{}s", num(&f["checkpoint_age_seconds"])),
            ]);
        }
        let st = &s["stream"];
        if st.is_object() {
            let dropped = st["dropped_disk_full"].as_u64().unwrap_or(0)
                + st["dropped_disk_error"].as_u64().unwrap_or(0);
            streams.push(vec![
                name.to_owned(),
                s["type"].as_str().unwrap_or("?").to_owned(),
                num(&st["lines"]),
                num(&st["spilled_lines"]),
                dropped.to_string(),
                format!(
                    "{} / {}",
                    num(&st["disk_buffer_used"]),
                    num(&st["disk_buffer_limit"])
                ),
                num(&st["disk_buffer_segments"]),
            ]);
        }
    }
    if files.len() > 1 {
        out.push_str(&table(&files));
        out.push('\n');
    }
    if streams.len() > 1 {
        out.push_str(&table(&streams));
        out.push('\n');
    }
    let mut sinks = vec![row(&[
        "SINK",
        "STATE",
        "QUEUED",
        "IN FLIGHT",
        "DELIVERED",
        "BYTES",
        "LAST ERROR",
    ])];
    for k in doc["sinks"].as_array().into_iter().flatten() {
        let err = match (k["last_error"].as_str(), k["last_error_at"].as_str()) {
            (Some(e), Some(at)) => format!("{at} {e}"),
            _ => "-".to_owned(),
        };
        sinks.push(vec![
            k["name"].as_str().unwrap_or("?").to_owned(),
            k["state"].as_str().unwrap_or("?").to_owned(),
            format!("{} chunks", num(&k["queued_chunks"])),
            format!(
                "{} ({} lines)",
                num(&k["in_flight_batches"]),
                num(&k["in_flight_lines"])
            ),
            num(&k["delivered_lines"]),
            num(&k["delivered_bytes"]),
            err,
        ]);
    }
    out.push_str(&table(&sinks));
    out.push('\n');
    let c = &doc["checkpoint"];
    out.push_str(&format!(
        "checkpoint {}: age {}s, last write {}{}\n",
        c["path"].as_str().unwrap_or("?"),
        num(&c["age_seconds"]),
        c["last_write_at"].as_str().unwrap_or("never"),
        match (c["failing"].as_bool(), c["last_error"].as_str()) {
            (Some(true), Some(e)) => format!(", FAILING: {e}"),
            _ => String::new(),
        }
    ));
    out.push_str(&format!(
        "memory budget: {} of {} bytes\n",
        num(&doc["memory"]["used_bytes"]),
        num(&doc["memory"]["limit_bytes"])
    ));
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
