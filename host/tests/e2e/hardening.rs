//! What an adversarial pass broke in the host (issue #7): transactions on
//! error paths, the SQL sandbox, deploys, disk and memory bounds, hangs,
//! and the answers users get.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, TOKEN, eventually, variant, wasm};

/// The hostile component beside the well-behaved probe, with a 1 MiB
/// database and `extra` lines appended (more components, `[delivery]`).
fn config(dir: &Path, hostile_limits: &str, extra: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("hardening.toml");
    let config = format!(
        "[components.hostile]\npath = {:?}\nroutes = [\"/hostile\"]\n\
         [components.hostile.limits]\ndatabase_mib = 1\n{hostile_limits}\n\n\
         [components.probe]\npath = {:?}\nroutes = [\"/probe\"]\nsubscribe = [\"probe\"]\n\n{extra}\n",
        wasm("hostile"),
        wasm("probe")
    );
    std::fs::write(&path, config)?;
    Ok(path)
}

fn start(dir: &Path, hostile_limits: &str, extra: &str) -> anyhow::Result<Host> {
    Host::start_with(&config(dir, hostile_limits, extra)?, &dir.join("data"))
}

fn result(body: &Value) -> String {
    body["result"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_transaction_sqlite_ended_commits_nothing_after_a_failed_publish() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "", "")?;
    // The database is full (a statement that fills it fails the invocation,
    // what it committed before stays)...
    for size in [100_000, 10_000, 1_000] {
        let (status, body) = host.get(&format!("/hostile/sql/fill-kept/{size}")).await?;
        assert!(status >= 500, "{status} {body}");
    }
    // ...a publish into it fails and SQLite ends the transaction; the
    // guest writes once more and answers 500 anyway.
    let (status, body) = host.get("/hostile/sql/publish-full").await?;
    assert!(status >= 500, "{status} {body}");
    // The write after the failed publish did not commit on its own.
    let (status, body) = host.get("/hostile/sql/count").await?;
    assert_eq!((status, result(&body)), (200, "Ok(Some(0))".into()), "{body}");
    Ok(())
}

#[tokio::test]
async fn the_sql_sandbox_judges_every_preparation_and_keeps_nothing_on_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "", "")?;
    // A trigger on the guest's own table, compiled into a statement that
    // was prepared before it, still may not rewrite SQLite's bookkeeping.
    let (status, body) = host.get("/hostile/sql/trigger").await?;
    let outcome = result(&body);
    assert_eq!(status, 200, "{body}");
    assert!(outcome.contains("trigger: Ok"), "{outcome}");
    assert!(outcome.contains("again: Err(Error::Denied"), "{outcome}");

    // No TEMP objects: they would outlive the invocation, outside the quota.
    let (_, body) = host.get("/hostile/sql/temp").await?;
    assert!(result(&body).contains("Denied"), "{body}");
    // The host's data path stays hidden.
    let (_, body) = host.get("/hostile/sql/pragma").await?;
    assert!(result(&body).contains("Denied"), "{body}");
    assert!(!result(&body).contains(&dir.path().display().to_string()), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_sort_beyond_sqlites_cache_stays_in_bounded_memory_instead_of_temporary_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "", "[server]\nsqlite_heap_mib = 48\n")?;
    // Two million rows to sort: SQLite would spill them to temporary files,
    // which no `database_mib` bounds. In memory, the heap limit stops it.
    let (status, body) = host.get("/hostile/sql/sort").await?;
    assert_eq!(status, 200, "{body}");
    assert!(result(&body).contains("out of memory"), "{body}");
    // The component and its neighbour go on.
    let (status, body) = host.get("/hostile/sql/count").await?;
    assert!(status == 200 && result(&body).starts_with("Ok"), "{body}");
    let (status, _) = host.get("/probe/seen").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// Deploys a re-tagged build of hostile.
async fn deploy_hostile(host: &Host, tag: &str) -> anyhow::Result<(u16, Value)> {
    let request = crate::harness::client()
        .put(format!("{}/admin/components/hostile", host.base))
        .bearer_auth(TOKEN)
        .body(variant("hostile", tag)?);
    host.send(request).await
}

#[tokio::test]
async fn the_running_version_serves_while_a_slow_init_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "timeout_ms = 2000", "")?;
    // The next init sleeps 3 s, then fails.
    let (status, body) = host.get("/hostile/init-plan/3000/1").await?;
    assert!(status == 200 && result(&body).starts_with("Ok"), "{body}");

    let (deployed, slowest) = served_during(&host, deploy_hostile(&host, "slow")).await?;
    let (status, body) = deployed?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("failing as planned"),
        "{body}"
    );
    // Never waited for the migration (3 s) on the live database.
    assert!(slowest.as_millis() < 1000);

    // A good migration still goes through, on the live database too.
    host.get("/hostile/init-plan/0/0").await?;
    let (status, body) = deploy_hostile(&host, "good").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

/// Runs `deploying` while the running version of hostile answers ten
/// reads; returns its outcome and the slowest read.
async fn served_during<T>(
    host: &Host,
    deploying: impl std::future::Future<Output = T>,
) -> anyhow::Result<(T, Duration)> {
    let serving = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            let (status, body) = host.get("/hostile/sql/count").await?;
            anyhow::ensure!(status == 200, "the running version answered {status}: {body}");
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        anyhow::Ok(slowest)
    };
    let (deployed, slowest) = tokio::join!(deploying, serving);
    Ok((deployed, slowest?))
}

#[tokio::test]
async fn a_migration_longer_than_migration_ms_is_refused_before_it_holds_the_live_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "migration_ms = 1000", "")?;
    // The next init sleeps 3 s, then succeeds: on the live database the
    // running version would wait 3 s for it.
    let (status, body) = host.get("/hostile/init-plan/3000/0").await?;
    assert!(status == 200 && result(&body).starts_with("Ok"), "{body}");
    let (deployed, slowest) = served_during(&host, deploy_hostile(&host, "slow")).await?;
    let (status, body) = deployed?;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("migration_ms (1000 ms)"),
        "{body}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "the running version waited {slowest:?}"
    );
    let (_, components) = host.admin(Method::GET, "/admin/components").await?;
    let hostile = components
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "hostile");
    assert_eq!(
        hostile.map(|c| c["previousVersion"].is_null()),
        Some(true),
        "{components}"
    );

    // One within the limit goes through; the running version waits for its
    // live run only (300 ms), within its deadline.
    host.get("/hostile/init-plan/300/0").await?;
    let (deployed, slowest) = served_during(&host, deploy_hostile(&host, "quick")).await?;
    let (status, body) = deployed?;
    assert_eq!(status, 200, "{body}");
    assert!(
        slowest < Duration::from_secs(2),
        "the running version waited {slowest:?}"
    );
    Ok(())
}

#[tokio::test]
async fn faults_are_validated_and_their_delay_counts_against_the_deadline() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "timeout_ms = 300", "")?;
    let (status, body) = host
        .fault("hostile", json!({ "delayMs": 1, "jitterMs": u64::MAX }))
        .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid-request")),
        "{body}"
    );

    let (status, body) = host.fault("hostile", json!({ "delayMs": 5000 })).await?;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let (status, body) = host.get("/hostile/sql/count").await?;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// The sink's subscription as `GET /admin/subscriptions` shows it (null if
/// absent).
async fn sink_subscription(host: &Host) -> anyhow::Result<Value> {
    let (_, subscriptions) = host.admin(Method::GET, "/admin/subscriptions").await?;
    Ok(subscriptions
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["consumer"] == "sink")
        .cloned()
        .unwrap_or_default())
}

#[tokio::test]
async fn a_full_database_is_507_and_its_events_wait_instead_of_dying() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sink = format!(
        "[components.sink]\npath = {:?}\nroutes = [\"/sink\"]\nsubscribe = [\"probe\"]\n\
         [components.sink.limits]\ndatabase_mib = 1\n\n\
         [delivery]\nmax_attempts = 2\nbackoff_ms = 10\nmax_backoff_ms = 200\n",
        wasm("probe")
    );
    let host = start(dir.path(), "", &sink)?;

    // A guest that fails for lack of storage: 507, not the guest's 500.
    let (status, body) = host.get("/hostile/sql/fill-kept/100000").await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (507, Some("insufficient-storage")),
        "{body}"
    );

    // Events for a consumer whose database is full wait for room, without
    // using up their attempts, and are applied once there is room.
    for size in [100_000, 10_000, 1_000, 100, 10] {
        let (status, body) = host.post("/sink/fill", json!({ "size": size })).await?;
        assert_eq!(status, 507, "{body}");
    }
    let (status, body) = host.post("/probe/publish", json!({ "keys": 4, "count": 200 })).await?;
    assert_eq!(status, 202, "{body}");
    eventually("the sink to run out of room", Duration::from_secs(20), || async {
        let sink = sink_subscription(&host).await?;
        Ok(sink["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("full"))
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, letters) = host.admin(Method::GET, "/admin/dead-letters").await?;
    assert_eq!(letters, json!([]), "nothing is dead-lettered for a full disk");

    let (status, body) = host.post("/sink/free", json!({})).await?;
    assert_eq!(status, 200, "{body}");
    eventually("every event applied", Duration::from_secs(20), || async {
        let (_, seen) = host.get("/sink/seen").await?;
        Ok((seen.as_array().map_or(0, Vec::len) == 200).then_some(()))
    })
    .await?;
    let (_, letters) = host.admin(Method::GET, "/admin/dead-letters").await?;
    assert_eq!(letters, json!([]));
    Ok(())
}

#[test]
fn a_read_only_data_directory_is_named_as_such() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("deployed"))?;
    let config = config(dir.path(), "", "")?;
    // A read-only bind mount in a namespace of its own (no privileges).
    let script = format!(
        "mount --bind {data} {data} && mount -o remount,bind,ro {data} && exec {host} serve --config {config} \
         --data-dir {data} --listen 127.0.0.1:0",
        data = data.display(),
        host = env!("CARGO_BIN_EXE_rentcar-host"),
        config = config.display(),
    );
    let output = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("is read-only"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn a_log_that_cannot_be_written_fails_no_request() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // stderr is /dev/full, so the readiness line cannot be read: the port
    // is picked here (and may race, hence the retries).
    let (mut child, base) = (1..=5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
                .args(["serve", "--config"])
                .arg(config(dir.path(), "", "").ok()?)
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .env("RUST_LOG", "debug")
                .env("RUST_BACKTRACE", "0")
                .env("RENTCAR_JWT_SECRET", crate::harness::JWT_SECRET)
                .stderr(std::fs::File::create("/dev/full").ok()?)
                .spawn()
                .ok()?;
            Some((KillOnDrop(child), format!("http://127.0.0.1:{port}")))
        })
        .ok_or_else(|| anyhow::anyhow!("cannot start the host"))?;
    let client = crate::harness::client();
    let started = Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(child.0.try_wait()?.is_none(), "the host exited");
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the host did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        let response = client
            .post(format!("{base}/probe/publish"))
            .json(&json!({ "keys": 1, "count": 1 }))
            .send()
            .await?;
        assert_eq!(response.status(), 202);
        let response = client.get(format!("{base}/probe/seen")).send().await?;
        assert_eq!(response.status(), 200);
    }
    assert!(child.0.try_wait()?.is_none(), "the host is still up");
    Ok(())
}

/// Sends `head` (a request without its body) on a connection of its own
/// and returns the first thing the host answers.
async fn first_answer(host: &Host, head: &str) -> anyhow::Result<String> {
    let address = host.base.trim_start_matches("http://").to_string();
    let head = head.to_string();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(head.as_bytes())?;
        let mut buffer = [0u8; 512];
        let read = stream.read(&mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer[..read]).into_owned())
    })
    .await?
}

/// A child process killed when the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_hosts_own_errors_are_json() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "max_request_bytes = 1000", "")?;
    // A client per request: a refused upload closes its connection.
    let admin = |method: Method, path: &str| {
        crate::harness::client()
            .request(method, format!("{}{path}", host.base))
            .bearer_auth(TOKEN)
    };
    let cases = [
        (admin(Method::POST, "/admin/dead-letters/abc/replay"), 400),
        (admin(Method::POST, "/admin/dead-letters/12345/replay"), 404),
        (admin(Method::DELETE, "/admin/links"), 405),
        (
            admin(Method::PUT, "/admin/components/probe").body(vec![0u8; 65 * 1024 * 1024]),
            413,
        ),
        (crate::harness::client().post(format!("{}/healthz", host.base)), 405),
    ];
    for (request, expected) in cases {
        let (status, body) = host.send(request).await?;
        assert_eq!(status, expected, "{body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{status}: {body}"
        );
    }

    // A body announced over the limit gets its 413 before "100 Continue".
    let bearer = crate::harness::token("kim", &["customer"]);
    let answer = first_answer(
        &host,
        &format!(
            "POST /hostile/sql/count HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        ),
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // So does a component upload announced over its limit (64 MiB).
    let answer = first_answer(
        &host,
        &format!(
            "PUT /admin/components/probe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 70000000\r\nExpect: 100-continue\r\n\r\n"
        ),
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn concurrent_scrapes_of_metrics_all_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "", "")?;
    let scrapes = join_all((0..50).map(|_| host.get("/metrics"))).await;
    for scrape in scrapes {
        let (status, body) = scrape?;
        assert_eq!(status, 200);
        assert!(
            body.as_str().unwrap_or_default().contains("rentcar_event_lag"),
            "{body}"
        );
    }
    Ok(())
}

/// Reads until the host closes the connection (whatever it answered
/// first), within `within`; `Err` if it stays open.
/// Starts a request on `stream`, then sends its headers a byte every 50 ms
/// for 10 s (a slowloris), on a thread of its own.
fn drip_headers(stream: &std::net::TcpStream) -> anyhow::Result<()> {
    let mut drip = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = drip.write_all(b"GET /healthz HTTP/1.1\r\n");
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(50));
            if drip.write_all(b"X").is_err() {
                return;
            }
        }
    });
    Ok(())
}

fn closed_within(mut stream: std::net::TcpStream, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(within))?;
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => continue,
            // A reset is closed too.
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return Ok(started.elapsed()),
            Err(err) => anyhow::bail!("still open after {:?}: {err}", started.elapsed()),
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_their_number_is_bounded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(
        dir.path(),
        "",
        "[server]\nheader_timeout_ms = 1500\nmax_connections = 8\n",
    )?;
    let address = host.base.trim_start_matches("http://").to_string();
    let connect = || std::net::TcpStream::connect(&address);

    // Eight connections take every slot: one never sends, one is kept
    // alive after an answer, one drips its headers a byte at a time, the
    // rest are just idle.
    let idle = connect()?;
    let mut kept = connect()?;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer)?;
    assert_eq!(&answer, b"HTTP/1.1 200");
    let slow = connect()?;
    drip_headers(&slow)?;
    let rest = (0..5).map(|_| connect()).collect::<Result<Vec<_>, _>>()?;

    // A ninth client waits in the backlog until the host closes the idle
    // ones, and is served then; the log says why it waited.
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(20), host.get("/healthz")).await??;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    host.logged("connection limit reached").await?;

    // Each of the eight was closed by the host, the slow one included.
    for stream in [idle, kept, slow].into_iter().chain(rest) {
        closed_within(stream, Duration::from_secs(5))?;
    }
    Ok(())
}

#[tokio::test]
async fn idle_connections_close_sooner_than_slow_headers_and_a_long_request_is_not_idle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(
        dir.path(),
        "",
        "[server]\nheader_timeout_ms = 4000\nidle_timeout_ms = 500\n",
    )?;
    let address = host.base.trim_start_matches("http://").to_string();
    let connect = || std::net::TcpStream::connect(&address);

    // A request that takes three times the idle timeout is served: the
    // host, not the client, is the one working.
    let mut long = connect()?;
    let token = crate::harness::token("kim", &["customer"]);
    long.write_all(
        format!("GET /hostile/hold/1/1500 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )?;
    let mut answer = [0u8; 12];
    long.read_exact(&mut answer)?;
    assert_eq!(&answer, b"HTTP/1.1 200");

    // Silent after connecting, or kept alive after that answer: closed
    // after the idle timeout, well before the header timeout.
    let silent = connect()?;
    for stream in [silent, long] {
        let closed = closed_within(stream, Duration::from_secs(3))?;
        assert!(closed < Duration::from_millis(2500), "closed after {closed:?}");
    }

    // A client dripping its headers is not idle: the header timeout
    // closes it.
    let slow = connect()?;
    drip_headers(&slow)?;
    let closed = closed_within(slow, Duration::from_secs(8))?;
    assert!(closed > Duration::from_millis(3000), "closed after {closed:?}");
    Ok(())
}

#[tokio::test]
async fn sigterm_does_not_wait_for_idle_or_stalled_clients() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = start(dir.path(), "", "[server]\nheader_timeout_ms = 60000\ndrain_ms = 1000\n")?;
    let address = host.base.trim_start_matches("http://").to_string();
    let _idle = std::net::TcpStream::connect(&address)?;
    let mut half_sent = std::net::TcpStream::connect(&address)?;
    half_sent.write_all(b"POST /probe/publish HTTP/1.1\r\nHost: x\r\nContent-Le")?;
    let mut half_body = std::net::TcpStream::connect(&address)?;
    half_body.write_all(b"POST /probe/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")?;
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let status = host.terminate()?;
    assert!(status.success(), "{status}\n{}", host.log());
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    Ok(())
}

/// Bytes of the event log on disk (its write-ahead log included).
fn log_on_disk(data: &Path) -> u64 {
    ["bus.db", "bus.db-wal"]
        .iter()
        .filter_map(|file| std::fs::metadata(data.join(file)).ok())
        .map(|meta| meta.len())
        .sum()
}

#[tokio::test]
async fn a_component_cannot_grow_the_event_log_or_the_dead_letters_beyond_their_bounds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The sink hears the hostile component's big events and fails each
    // (they are not the probe's), so each goes to the dead letters after a
    // few quick attempts.
    let sink = format!(
        "[components.sink]\npath = {:?}\nroutes = [\"/sink\"]\nsubscribe = [\"hostile\"]\n\n\
         [delivery]\nmax_attempts = 2\nbackoff_ms = 10\nmax_backoff_ms = 20\n\
         retention_interval_ms = 200\ndead_letter_mib = 1\n",
        wasm("probe")
    );
    let host = start(dir.path(), "log_mib = 1", &sink)?;

    // 30 events of 200 KiB (6 MiB), two at a time; while the topic is full
    // they wait in the outbox, which fills the component's own 1 MiB
    // database: then it is told so, and tries again.
    let mut published = 0;
    let started = Instant::now();
    while published < 30 {
        let (status, body) = host.get("/hostile/publish/2").await?;
        if status == 200 && result(&body) == "Ok(())" {
            published += 2;
        } else {
            assert_eq!(status, 507, "{body}");
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "stuck at {published}: {body}\n{}",
                host.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eventually(
        "every event to reach the dead letters",
        Duration::from_secs(30),
        || async {
            let sink = sink_subscription(&host).await?;
            Ok((sink["deadLettered"] == 30).then_some(()))
        },
    )
    .await?;
    // Retention keeps the newest 1 MiB of dead letters (4 of 200 KiB)...
    let letters = eventually("dead letters to be pruned", Duration::from_secs(10), || async {
        let (_, letters) = host.admin(Method::GET, "/admin/dead-letters").await?;
        let count = letters.as_array().map_or(0, Vec::len);
        Ok((count <= 5).then_some(count))
    })
    .await?;
    assert!(letters >= 1, "the newest dead letters stay");
    // ...and the log on disk stays near its bounds (1 MiB of the topic, 1
    // MiB of dead letters, the pages freed in between and the write-ahead
    // log), where unbounded it took the 6 MiB of events twice over.
    let on_disk = log_on_disk(&dir.path().join("data"));
    assert!(on_disk < 6 * 1024 * 1024, "the log takes {on_disk} bytes on disk");
    Ok(())
}

/// Fires `count` concurrent requests that each hold 10 MiB for a second;
/// returns how many were served and the answers of those refused.
async fn hold_concurrently(host: &Host, count: usize) -> anyhow::Result<(usize, Vec<(u16, Value)>)> {
    let answers = join_all((0..count).map(|_| host.get("/hostile/hold/10/1000"))).await;
    let mut served = 0;
    let mut refused = Vec::new();
    for answer in answers {
        let (status, body) = answer?;
        if status == 200 {
            served += 1;
        } else {
            refused.push((status, body));
        }
    }
    Ok((served, refused))
}

#[tokio::test]
async fn memory_is_budgeted_per_component_and_for_the_whole_host() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Instances of up to 16 MiB, 48 MiB for all of the component's.
    let host = start(dir.path(), "memory_mib = 16\nmemory_budget_mib = 48", "")?;
    let (served, refused) = hold_concurrently(&host, 12).await?;
    assert!((1..=4).contains(&served), "{served} served: {refused:?}");
    for (status, body) in &refused {
        assert_eq!((*status, body["error"].as_str()), (503, Some("busy")), "{body}");
        assert!(
            body["message"].as_str().unwrap_or_default().contains("memory budget"),
            "{body}"
        );
    }
    // The budget comes back with the instances, and the neighbour served
    // throughout.
    let (served, refused) = hold_concurrently(&host, 2).await?;
    assert_eq!(served, 2, "{refused:?}");
    let (status, _) = host.get("/probe/seen").await?;
    assert_eq!(status, 200);
    drop(host);

    // The host's budget bounds every component together.
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "memory_mib = 16", "[server]\nmemory_budget_mib = 40\n")?;
    assert!(host.log().contains("memory_budget_mib=40"), "{}", host.log());
    let (served, refused) = hold_concurrently(&host, 12).await?;
    assert!((1..=3).contains(&served), "{served} served: {refused:?}");
    assert!(refused.iter().all(|(status, _)| *status == 503), "{refused:?}");
    Ok(())
}

#[tokio::test]
async fn what_the_host_builds_for_a_guest_counts_in_its_memory_budget() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "memory_mib = 16\nmemory_budget_mib = 32", "")?;
    // 4 MiB of rows reach the guest.
    let (status, body) = host.get("/hostile/sql/result/4").await?;
    assert_eq!((status, result(&body)), (200, "Ok(64)".to_string()), "{body}");
    // 40 MiB of rows would not fit the guest's 16 MiB, nor the budget: the
    // host stops building them at the budget (503, retry) instead of
    // holding all 40 MiB first.
    let (status, body) = host.get("/hostile/sql/result/40").await?;
    assert_eq!((status, body["error"].as_str()), (503, Some("busy")), "{body}");
    host.logged("memory budget is spent").await?;
    // Given back: the next one is served.
    let (status, body) = host.get("/hostile/sql/result/4").await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn traps_and_missed_deadlines_are_counted_and_every_answer_has_a_request_id() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = start(dir.path(), "timeout_ms = 300", "")?;
    let response = crate::harness::client()
        .get(format!("{}/hostile/trap", host.base))
        .send()
        .await?;
    assert_eq!(response.status(), 500);
    assert!(response.headers().contains_key("x-request-id"));
    let (status, _) = host.get("/hostile/loop").await?;
    assert_eq!(status, 504);
    let (_, metrics) = host.get("/metrics").await?;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for kind in ["trap", "deadline"] {
        let line = format!("rentcar_traps_total{{component=\"hostile\",kind=\"{kind}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    Ok(())
}

#[tokio::test]
async fn a_sigterm_as_soon_as_the_host_says_it_listens_drains_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = start(dir.path(), "", "")?;
    let status = host.terminate()?;
    assert!(status.success(), "{status}\n{}", host.log());
    assert!(host.log().contains("stopped"), "{}", host.log());
    Ok(())
}
