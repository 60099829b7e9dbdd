//! On Kafka, a broker that cannot be reached is not an outage: orders are
//! taken, their events wait in the outboxes, and once the broker is back
//! everything is delivered, in order per key, once. (The rest of the suite
//! runs on Kafka too: `cargo xtask test`.)

use std::time::Duration;

use serde_json::json;

use crate::broker::{Broker, Proxy, free_port, on_broker};
use crate::harness::{Host, books_balance, eventually, probe_config, runtime_toml, wait_for};

/// A broker behind a proxy that can cut it off, and a host on it.
async fn host_behind_a_proxy(dir: &std::path::Path) -> anyhow::Result<(Broker, Proxy, Host)> {
    let port = free_port()?;
    let proxy = Proxy::start(port).await?;
    let broker = Broker::start_advertising(port, proxy.port)?;
    let data = dir.join("data");
    let config = on_broker(&runtime_toml(), &data, &format!("127.0.0.1:{}", proxy.port))?;
    Ok((broker, proxy, Host::start_with(&config, &data)?))
}

/// `wait_for`, with time for a client to find a broker that came back.
async fn reaches(host: &Host, path: &str, field: &str, expected: serde_json::Value) -> anyhow::Result<()> {
    eventually(
        &format!("{path} to have {field} = {expected}"),
        Duration::from_secs(60),
        || async {
            let (status, body) = host.get(path).await?;
            Ok((status == 200 && body[field] == expected).then_some(()))
        },
    )
    .await
}

async fn ready(host: &Host) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("{}/readyz", host.base)).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

#[tokio::test]
async fn orders_are_taken_while_the_broker_is_away_and_delivered_once_when_it_returns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_broker, proxy, host) = host_behind_a_proxy(dir.path()).await?;
    let car = host.car("Ioniq", 100).await?;
    wait_for(&host, &format!("/availability/{car}"), "available", json!(100)).await?;

    proxy.cut();
    for _ in 0..20 {
        let order = host.order(car, 2).await?;
        assert_eq!(order["status"], "PAID", "{order}");
    }
    // Nothing reaches the view while the broker is away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, view) = host.get(&format!("/availability/{car}")).await?;
    assert_eq!(view["available"], 100, "{view}");

    proxy.restore();
    reaches(&host, &format!("/availability/{car}"), "available", json!(60)).await?;
    let summary = eventually("the books to balance", Duration::from_secs(60), || books_balance(&host)).await?;
    eprintln!("{summary}");
    let orders = host.all("/orders").await?;
    assert!(orders.iter().all(|order| order["status"] == "RESERVED"), "{orders:?}");
    Ok(())
}

/// Places `count` orders of one `car`, one every 100 ms; each is paid.
async fn order_every_100_ms(host: &Host, car: u64, count: usize) -> anyhow::Result<()> {
    for _ in 0..count {
        let order = host.order(car, 1).await?;
        assert_eq!(order["status"], "PAID", "{order}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn orders_taken_while_the_broker_is_stopped_are_delivered_once_it_goes_on() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let host = Host::start_with(&on_broker(&runtime_toml(), &data, &broker.address)?, &data)?;
    let car = host.car("Ioniq", 100).await?;
    wait_for(&host, &format!("/availability/{car}"), "available", json!(100)).await?;

    // Orders go on, one every 100 ms, before, while and after the broker's
    // process is stopped: longer than an event may wait for the broker
    // (10 s), so appends in flight fail and are tried again.
    order_every_100_ms(&host, car, 10).await?;
    broker.pause()?;
    let stopped = std::time::Instant::now();
    order_every_100_ms(&host, car, 30).await?;
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(stopped.elapsed())).await;
    broker.resume()?;
    order_every_100_ms(&host, car, 10).await?;

    reaches(&host, &format!("/availability/{car}"), "available", json!(50)).await?;
    let summary = eventually("the books to balance", Duration::from_secs(60), || books_balance(&host)).await?;
    eprintln!("{summary}");
    let orders = host.all("/orders").await?;
    assert_eq!(orders.len(), 50);
    assert!(orders.iter().all(|order| order["status"] == "RESERVED"), "{orders:?}");
    Ok(())
}

#[tokio::test]
async fn a_host_started_without_its_broker_serves_and_catches_up_when_it_comes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let proxy = Proxy::start(port).await?;
    proxy.cut();
    let data = dir.path().join("data");
    let config = on_broker(&runtime_toml(), &data, &format!("127.0.0.1:{}", proxy.port))?;
    let host = Host::start_with(&config, &data)?;

    let (status, body) = ready(&host).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("event bus"), "{body}");
    let car = host.car("Kona", 5).await?;
    let order = host.order(car, 1).await?;
    assert_eq!(order["status"], "PAID", "{order}");
    eventually("the log to say why", Duration::from_secs(20), || async {
        Ok(host.log().contains("cannot reach the event bus").then_some(()))
    })
    .await?;

    let _broker = Broker::start_advertising(port, proxy.port)?;
    proxy.restore();
    eventually("the host to be ready", Duration::from_secs(60), || async {
        Ok((ready(&host).await?.0 == 200).then_some(()))
    })
    .await?;
    let id = order["id"].as_u64().unwrap_or_default();
    reaches(&host, &format!("/orders/{id}"), "status", json!("RESERVED")).await?;
    reaches(&host, &format!("/availability/{car}"), "available", json!(4)).await?;
    Ok(())
}

/// What the probe at `host` applied, as (key, seq) in the order applied.
async fn applied(host: &Host) -> anyhow::Result<Vec<(String, i64)>> {
    let (_, seen) = host.get("/probe/seen").await?;
    Ok(seen
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            (
                row["key"].as_str().unwrap_or_default().to_string(),
                row["seq"].as_i64().unwrap_or(-1),
            )
        })
        .collect())
}

/// What the probe of a stopped host applied, read from its database.
fn applied_in(data: &std::path::Path) -> anyhow::Result<Vec<(String, i64)>> {
    let probe = rusqlite::Connection::open(data.join("probe.db"))?;
    let mut rows = probe.prepare("SELECT key, seq FROM seen ORDER BY n")?;
    let seen = rows.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(seen.collect::<Result<_, _>>()?)
}

/// Publishes `rounds` more rounds of probe events on `host`, one every
/// 100 ms: an event for each of 16 keys, numbered by round (`round` counts
/// them all); returns how many events all rounds made.
async fn publish(host: &Host, round: &mut i64, rounds: i64) -> anyhow::Result<usize> {
    for _ in 0..rounds {
        let events = json!({ "keys": 16, "count": 16, "from": *round });
        let (status, body) = host.post("/probe/publish", events).await?;
        assert_eq!(status, 202, "{body}");
        *round += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(*round as usize * 16)
}

#[tokio::test]
async fn a_member_joining_and_leaving_the_group_loses_no_event_and_applies_none_twice() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let (first_data, second_data) = (dir.path().join("first"), dir.path().join("second"));
    // Both hosts run the probe under one topic prefix: one consumer group.
    let config = on_broker(&probe_config(dir.path(), "")?, &first_data, &broker.address)?;
    let first = Host::start_with(&config, &first_data)?;
    let mut round = 0;
    let published = publish(&first, &mut round, 5).await?;
    eventually(
        "the first host to apply everything",
        Duration::from_secs(30),
        || async { Ok((applied(&first).await?.len() == published).then_some(())) },
    )
    .await?;

    // A second member joins under load, takes part of the partitions...
    let mut second = Host::start_with(&config, &second_data)?;
    publish(&first, &mut round, 20).await?;
    eventually("the second host to apply some", Duration::from_secs(30), || async {
        Ok((!applied(&second).await?.is_empty()).then_some(()))
    })
    .await?;
    publish(&first, &mut round, 20).await?;
    // ...and leaves under load: the first takes its partitions back.
    let status = second.terminate()?;
    assert!(status.success(), "{status}");
    second.logged("left the consumer groups").await?;
    let by_second = applied_in(&second_data)?;
    let published = publish(&first, &mut round, 10).await?;

    let by_first = eventually("every event to be applied", Duration::from_secs(60), || async {
        let by_first = applied(&first).await?;
        Ok((by_first.len() + by_second.len() >= published).then_some(by_first))
    })
    .await?;
    // Settled: nothing more arrives late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let by_first_later = applied(&first).await?;
    assert_eq!(by_first_later.len(), by_first.len(), "events applied after all were");

    let mut all: Vec<&(String, i64)> = by_first.iter().chain(&by_second).collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "an event was applied twice");
    assert_eq!(all.len(), published, "an event was lost");
    // Each key's events were applied in order on each member.
    for by in [&by_first, &by_second] {
        let mut last: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for (key, seq) in by {
            let previous = last.insert(key, *seq);
            assert!(
                previous.is_none_or(|previous| previous < *seq),
                "{key} applied out of order"
            );
        }
    }
    eprintln!(
        "{published} events: {} applied by the first member, {} by the second",
        by_first.len(),
        by_second.len()
    );
    Ok(())
}
