//! The event path on its own: dead letters and replay, per-key order across
//! parallel partitions, rebuilding a read model by replaying the log.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, eventually, probe_config, wait_for};

async fn seen(host: &Host) -> anyhow::Result<Vec<Value>> {
    let (_, seen) = host.get("/probe/seen").await?;
    Ok(seen.as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_poison_event_goes_to_the_dead_letters_and_replays_after_a_fix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "max_attempts = 3\nbackoff_ms = 10\nmax_backoff_ms = 20")?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;

    let (status, _) = host
        .post("/probe/publish", json!({ "keys": 1, "count": 1, "poison": true }))
        .await?;
    assert_eq!(status, 202);
    let (status, _) = host.post("/probe/publish", json!({ "keys": 1, "count": 2 })).await?;
    assert_eq!(status, 202);

    // The consumer gives up on the poison event and proceeds with the rest.
    let letters = eventually("a dead letter", Duration::from_secs(20), || async {
        let (_, letters) = host.admin(Method::GET, "/admin/dead-letters").await?;
        Ok(letters.as_array().filter(|letters| !letters.is_empty()).cloned())
    })
    .await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["consumer"], "probe");
    assert_eq!(letter["attempts"], 3);
    assert!(letter["lastError"].as_str().unwrap().contains("poisoned"), "{letter}");
    assert_eq!(letter["event"]["type"], "Probed");
    assert_eq!(letter["event"]["source"], "probe");
    assert_eq!(letter["event"]["schemaVersion"], 1);
    eventually("the two good events", Duration::from_secs(10), || async {
        Ok((seen(&host).await?.len() == 2).then_some(()))
    })
    .await?;
    let (_, subscriptions) = host.admin(Method::GET, "/admin/subscriptions").await?;
    let subscription = &subscriptions[0];
    assert_eq!(subscription["lag"], 0, "{subscription}");
    assert_eq!(subscription["deadLettered"], 1, "{subscription}");
    assert!(
        subscription["lastError"].as_str().unwrap().contains("poisoned"),
        "{subscription}"
    );

    let replay = format!("/admin/dead-letters/{}/replay", letter["id"]);
    let (status, body) = host.admin(Method::POST, &replay).await?;
    assert_eq!(status, 409, "still poisonous before the fix: {body}");

    host.post("/probe/fix", json!({})).await?;
    let (status, body) = host.admin(Method::POST, &replay).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen(&host).await?.len(), 3);
    let (_, letters) = host.admin(Method::GET, "/admin/dead-letters").await?;
    assert_eq!(letters, json!([]));
    let (status, _) = host.admin(Method::POST, &replay).await?;
    assert_eq!(status, 404, "a replayed letter is gone");
    Ok(())
}

#[tokio::test]
async fn parallel_partitions_keep_the_order_of_each_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "[bus]\npartitions = 8")?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    for _ in 0..4 {
        let (status, _) = host.post("/probe/publish", json!({ "keys": 16, "count": 400 })).await?;
        assert_eq!(status, 202);
    }
    let seen = eventually("1600 deliveries", Duration::from_secs(60), || async {
        let seen = seen(&host).await?;
        Ok((seen.len() >= 1600).then_some(seen))
    })
    .await?;
    assert_eq!(seen.len(), 1600, "each event applied exactly once");
    let mut next: HashMap<String, i64> = HashMap::new();
    let mut interleaved = false;
    let mut previous_key = String::new();
    for entry in &seen {
        let key = entry["key"].as_str().unwrap().to_string();
        let expected = next.entry(key.clone()).or_default();
        // Each publish restarts the sequence at 0; within it, strictly +1.
        let seq = entry["seq"].as_i64().unwrap();
        assert!(
            seq == *expected || seq == 0,
            "key {key}: got {seq} after {}",
            *expected - 1
        );
        *expected = seq + 1;
        interleaved |= !previous_key.is_empty() && previous_key != key;
        previous_key = key;
    }
    assert!(interleaved);
    Ok(())
}

#[tokio::test]
async fn resetting_the_view_rebuilds_it_from_the_log() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let mut cars = Vec::new();
    for (name, stock) in [("Ioniq", 3), ("EV6", 2)] {
        cars.push(host.car(name, stock).await?);
    }
    let first = host.order(cars[0], 2).await?;
    host.order(cars[1], 1).await?;
    wait_for(&host, &format!("/orders/{}", first["id"]), "status", json!("RESERVED")).await?;
    host.post(&format!("/orders/{}/cancel", first["id"]), json!({})).await?;
    wait_for(&host, &format!("/availability/{}", cars[0]), "available", json!(3)).await?;
    let before = wait_for(&host, &format!("/availability/{}", cars[1]), "available", json!(1)).await?;
    let everything = host.all("/availability").await?;
    assert_eq!(everything[1], before);

    let (status, body) = host.admin(Method::POST, "/admin/subscriptions/view/reset").await?;
    assert_eq!(status, 202, "{body}");
    eventually("the view to be rebuilt", Duration::from_secs(20), || async {
        let now = host.all("/availability").await?;
        Ok((now == everything).then_some(()))
    })
    .await?;
    let (_, subscriptions) = host.admin(Method::GET, "/admin/subscriptions").await?;
    let view = subscriptions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["consumer"] == "view")
        .unwrap();
    assert!(
        view["position"].as_u64() > Some(0) && view["head"] == view["position"],
        "{view}"
    );

    // The sources of truth refuse: their state is not built from events.
    let (status, body) = host.admin(Method::POST, "/admin/subscriptions/rentcar/reset").await?;
    assert_eq!(status, 409, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_reset_cut_short_by_a_crash_is_finished_at_start_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    let car = host.car("Niro", 4).await?;
    host.order(car, 1).await?;
    let before = wait_for(&host, &format!("/availability/{car}"), "available", json!(3)).await?;
    // Stopped cleanly, so that the positions are saved at the head of the
    // log: nothing would be delivered again without the rewind.
    host.terminate()?;

    // What the reset's first commit leaves if the host dies before the
    // second: the view and its inbox emptied, the rewind pending, the
    // positions still at the head of the log.
    let view = rusqlite::Connection::open(dir.path().join("view.db"))?;
    view.execute_batch("DELETE FROM availability; DELETE FROM _rc_inbox; INSERT INTO _rc_rewind VALUES (1);")?;
    drop(view);

    let host = Host::start(dir.path())?;
    let after = wait_for(&host, &format!("/availability/{car}"), "available", json!(3)).await?;
    assert_eq!(after, before);
    assert!(host.log().contains("finishing a reset"), "{}", host.log());
    Ok(())
}

#[tokio::test]
async fn retention_bounds_the_log_once_events_are_delivered() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "retention_events = 10\nretention_interval_ms = 100")?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    host.post("/probe/publish", json!({ "keys": 3, "count": 50 })).await?;
    let subscription = eventually("the log to be pruned to 10 events", Duration::from_secs(20), || async {
        let (_, subscriptions) = host.admin(Method::GET, "/admin/subscriptions").await?;
        let subscription = subscriptions[0].clone();
        Ok((subscription["retained"] == 10).then_some(subscription))
    })
    .await?;
    assert_eq!(subscription["head"], 50, "{subscription}");
    assert_eq!(subscription["lag"], 0, "{subscription}");
    assert_eq!(seen(&host).await?.len(), 50);
    Ok(())
}

#[tokio::test]
async fn a_commit_midway_keeps_what_came_before_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = probe_config(dir.path(), "")?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    // The request commits ("split", 1), then fails: ("split", 2) rolls back.
    let (status, body) = host.post("/probe/split", json!({})).await?;
    assert_eq!(status, 500, "{body}");
    assert_eq!(seen(&host).await?, [json!({ "key": "split", "seq": 1 })]);
    // Deliveries may not commit midway (the probe's handler checks that the
    // host refuses): events still apply, each with its inbox row.
    host.post("/probe/publish", json!({ "keys": 1, "count": 3 })).await?;
    eventually("three events applied", Duration::from_secs(10), || async {
        Ok((seen(&host).await?.len() == 4).then_some(()))
    })
    .await?;
    Ok(())
}
