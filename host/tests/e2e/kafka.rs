//! On Kafka, a broker that cannot be reached is not an outage: orders are
//! taken, their events wait in the outboxes, and once the broker is back
//! everything is delivered, in order per key, once. (The rest of the suite
//! runs on Kafka too: `cargo xtask test`.)

use std::time::Duration;

use serde_json::json;

use crate::broker::{Broker, Proxy, free_port, on_broker};
use crate::harness::{Host, books_balance, eventually, runtime_toml, wait_for};

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
