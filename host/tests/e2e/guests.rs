//! What an adversarial pass broke in the bounded contexts (issue #13):
//! unpaginated lists, a double-clicked order that took other customers'
//! cars, unreadable headers read as absent, a cancel that held order's
//! database across the payment call, ids and names out of range, and 405
//! for paths that do not exist.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, eventually, wait_for};

fn assert_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{what}: not a JSON error: {body}"
    );
}

/// A `POST /orders` with an Idempotency-Key, the key given as raw bytes.
fn keyed_order(host: &Host, key: &[u8], body: &Value) -> anyhow::Result<reqwest::RequestBuilder> {
    Ok(crate::harness::client()
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes(key)?)
        .json(body))
}

#[tokio::test]
async fn every_list_is_paginated_with_a_cursor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let mut cars = Vec::new();
    for i in 0..101 {
        cars.push(host.car(&format!("Model {i}"), 10).await?);
    }
    let mut orders = Vec::new();
    for car in &cars[..3] {
        orders.push(host.order(*car, 1).await?["id"].as_u64().unwrap());
    }
    // The view applies the cars' events in order per car only (on Kafka,
    // the partitions go at their own pace): wait until it shows them all.
    eventually("the view to show every car", Duration::from_secs(20), || async {
        let (status, view) = host.get("/availability?limit=1000").await?;
        Ok((status == 200 && view["items"].as_array().map(Vec::len) == Some(cars.len())).then_some(()))
    })
    .await?;

    // The default page is 100 items; `next` is the last id on it.
    let (status, page) = host.get("/cars").await?;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(100), "{page}");
    assert_eq!(page["next"], json!(cars[99]), "{page}");
    let (_, last) = host.get(&format!("/cars?after={}", cars[99])).await?;
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1), "{last}");
    assert_eq!(last["items"][0]["id"], json!(cars[100]));
    assert_eq!(last["next"], Value::Null, "the last page says so");
    let (_, whole) = host.get("/cars?limit=1000").await?;
    assert_eq!(whole["items"].as_array().map(Vec::len), Some(101), "{whole}");
    assert_eq!(whole["next"], Value::Null);

    // Every list of every context pages the same way, by its ids.
    let lists = [
        ("/orders", "id", orders.clone()),
        ("/payments", "id", orders.clone()),
        (&format!("/payments?orderId={}", orders[1]), "id", vec![orders[1]]),
        ("/cars", "id", cars.clone()),
        ("/availability", "carId", cars.clone()),
    ];
    for (path, id, expected) in lists {
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, first) = host.get(&format!("{path}{separator}limit=2")).await?;
        assert_eq!(status, 200, "{path}: {first}");
        let ids: Vec<_> = first["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item[id].clone())
            .collect();
        let want: Vec<_> = expected.iter().take(2).map(|id| json!(id)).collect();
        assert_eq!(ids, want, "{path}: {first}");
        let next = if expected.len() > 2 {
            json!(expected[1])
        } else {
            Value::Null
        };
        assert_eq!(first["next"], next, "{path}: {first}");
        let everything: Vec<_> = host.all(path).await?.iter().map(|item| item[id].clone()).collect();
        assert_eq!(
            everything,
            expected.iter().map(|id| json!(id)).collect::<Vec<_>>(),
            "{path}"
        );
    }

    // Bad limits and cursors are the client's mistake.
    for query in [
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1001",
        "limit=18446744073709551616",
        "after=abc",
        "after=-5",
        "after=18446744073709551615",
    ] {
        for path in ["/orders", "/payments", "/cars", "/availability"] {
            let (status, body) = host.get(&format!("{path}?{query}")).await?;
            assert_error(status, &body, 400, &format!("{path}?{query}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_double_clicked_order_pays_once_and_takes_no_other_customers_car() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Staria", 2).await?;
    let body = json!({ "carId": car, "qty": 1, "customer": "double" });
    assert_eq!(host.fault("payment", json!({ "delayMs": 300 })).await?.0, 200);

    let clicks = join_all((0..6).map(|_| async { host.send(keyed_order(&host, b"click", &body)?).await })).await;
    let mut placed = Vec::new();
    for click in clicks {
        let (status, answer) = click?;
        match status {
            201 => placed.push(answer),
            _ => {
                assert_error(status, &answer, 409, "a duplicate while the first pays");
                assert_eq!(answer["error"], "order-in-progress", "{answer}");
            }
        }
    }
    assert_eq!(placed.len(), 1, "{placed:?}");
    let payments = host.all("/payments").await?;
    assert_eq!(payments.len(), 1, "no duplicate ever called payment: {payments:?}");

    // Another customer takes the last car, and gets it.
    host.admin(Method::DELETE, "/admin/faults/payment").await?;
    let other = host.order(car, 1).await?;
    wait_for(&host, &format!("/orders/{}", other["id"]), "status", json!("RESERVED")).await?;
    wait_for(
        &host,
        &format!("/orders/{}", placed[0]["id"]),
        "status",
        json!("RESERVED"),
    )
    .await?;
    let (status, again) = host.send(keyed_order(&host, b"click", &body)?).await?;
    assert_eq!((status, again["id"].clone()), (201, placed[0]["id"].clone()), "{again}");
    Ok(())
}

#[tokio::test]
async fn a_key_whose_placement_failed_is_free_for_a_retry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Ray", 3).await?;
    let body = json!({ "carId": car, "qty": 1, "customer": "retry" });

    host.admin(Method::POST, "/admin/components/payment/stop").await?;
    let (status, refused) = host.send(keyed_order(&host, b"once", &body)?).await?;
    assert_error(status, &refused, 503, "payment is down");
    host.admin(Method::POST, "/admin/components/payment/start").await?;
    let (status, order) = host.send(keyed_order(&host, b"once", &body)?).await?;
    assert_eq!(status, 201, "the key was released: {order}");

    // A key used while another order with it is in flight is still checked
    // against what it was used for.
    host.fault("payment", json!({ "delayMs": 300 })).await?;
    let other = json!({ "carId": car, "qty": 2, "customer": "retry" });
    let (first, second) = tokio::join!(async { host.send(keyed_order(&host, b"twice", &body)?).await }, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        host.send(keyed_order(&host, b"twice", &other)?).await
    });
    assert_eq!(first?.0, 201);
    let (status, reused) = second?;
    assert_error(status, &reused, 422, "the key of an order in flight, for another order");
    Ok(())
}

#[tokio::test]
async fn a_key_claimed_when_the_host_died_is_free_again_later() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut host = Host::start(dir.path())?;
    let car = host.car("Bongo", 3).await?;
    let body = json!({ "carId": car, "qty": 1, "customer": "crash" });
    host.fault("payment", json!({ "delayMs": 1500 })).await?;
    let cut_short = keyed_order(&host, b"crash", &body)?
        .timeout(Duration::from_millis(400))
        .send()
        .await;
    assert!(cut_short.is_err(), "{cut_short:?}");
    // Killed while the placement waits for payment: its claim stays.
    host.kill();
    let host = Host::start(dir.path())?;

    let (status, busy) = host.send(keyed_order(&host, b"crash", &body)?).await?;
    assert_error(status, &busy, 409, "a claim that may still be in flight");
    assert_eq!(busy["error"], "order-in-progress", "{busy}");
    // No placement outlives order's deadline: the claim expires after it.
    let order = eventually("the claim to expire", Duration::from_secs(40), || async {
        let (status, order) = host.send(keyed_order(&host, b"crash", &body)?).await?;
        Ok((status == 201).then_some(order))
    })
    .await?;
    wait_for(&host, &format!("/orders/{}", order["id"]), "status", json!("RESERVED")).await?;
    assert_eq!(host.all("/orders").await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_that_cannot_be_read_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Niro", 3).await?;
    let body = json!({ "carId": car, "qty": 1, "customer": "latin" });
    for _ in 0..2 {
        let (status, answer) = host.send(keyed_order(&host, b"caf\xe9", &body)?).await?;
        assert_error(status, &answer, 400, "a key that is not UTF-8");
    }
    let twice = crate::harness::client()
        .post(format!("{}/orders", host.base))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&body);
    let (status, answer) = host.send(twice).await?;
    assert_error(status, &answer, 400, "two keys");
    assert!(host.all("/orders").await?.is_empty(), "nothing was placed");
    assert!(host.all("/payments").await?.is_empty(), "nothing was paid");

    // A UTF-8 key that is not ASCII is a key like any other.
    let (status, first) = host.send(keyed_order(&host, "주문-1".as_bytes(), &body)?).await?;
    assert_eq!(status, 201, "{first}");
    let (status, again) = host.send(keyed_order(&host, "주문-1".as_bytes(), &body)?).await?;
    assert_eq!((status, &again["id"]), (201, &first["id"]), "{again}");
    Ok(())
}

#[tokio::test]
async fn cancels_waiting_for_payment_do_not_hold_orders_database() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Casper", 20).await?;
    let mut orders = Vec::new();
    for _ in 0..9 {
        orders.push(host.order(car, 1).await?["id"].as_u64().unwrap());
    }
    let (reader, cancelled) = (orders[0], &orders[1..]);
    let delay = Duration::from_millis(400);
    host.fault("payment", json!({ "delayMs": delay.as_millis() as u64 }))
        .await?;

    let cancels = join_all(
        cancelled
            .iter()
            // Two at once for the same order: one cancels, the other is
            // refused (the payment is cancelled already).
            .chain([&cancelled[0]])
            .map(|id| {
                let host = &host;
                async move { host.post(&format!("/orders/{id}/cancel"), json!({})).await }
            }),
    );
    let read = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let (status, order) = host.get(&format!("/orders/{reader}")).await?;
        anyhow::ensure!(status == 200, "{order}");
        anyhow::Ok(started.elapsed())
    };
    let (cancels, read) = tokio::join!(cancels, read);
    let took = read?;
    // Holding the database across each call, the 8 cancels made the read
    // wait for up to 8 of them.
    assert!(took < delay, "GET /orders/{reader} took {took:?} behind the cancels");

    let mut statuses: Vec<u16> = Vec::new();
    for cancel in cancels {
        let (status, body) = cancel?;
        assert!(status == 200 || status == 409, "{status} {body}");
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 1, "{statuses:?}");
    host.admin(Method::DELETE, "/admin/faults/payment").await?;
    for id in cancelled {
        let (_, order) = host.get(&format!("/orders/{id}")).await?;
        assert_eq!(order["status"], "CANCELLED", "{order}");
        let (_, payment) = host.get(&format!("/payments/{}", order["paymentId"])).await?;
        assert_eq!(payment["status"], "CANCELLED", "{payment}");
    }
    wait_for(&host, &format!("/availability/{car}"), "available", json!(19)).await?;
    Ok(())
}

#[tokio::test]
async fn ids_beyond_the_signed_64_bit_range_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("Avante", 3).await?;
    let order = host.order(car, 1).await?;

    for car_id in ["18446744073709551615", "9223372036854775808", "0", "-1", "1e3"] {
        let body = format!("{{\"carId\":{car_id},\"qty\":1,\"customer\":\"kim\"}}");
        let (status, answer) = host.post_raw("/orders", body).await?;
        assert_error(status, &answer, 400, &format!("carId {car_id}"));
    }
    let bad_paths = [
        "/orders/18446744073709551615",
        "/orders/9223372036854775808",
        "/orders/0",
        "/orders/+1",
        "/orders/18446744073709551615/payment",
        "/payments/18446744073709551615",
        "/payments/0",
        "/payments?orderId=18446744073709551615",
        "/payments?orderId=0",
        "/cars/9223372036854775808",
        "/cars/0",
        "/availability/18446744073709551615",
    ];
    for path in bad_paths {
        let (status, answer) = host.get(path).await?;
        assert_error(status, &answer, 400, path);
    }
    let (status, answer) = host.post("/orders/18446744073709551615/cancel", json!({})).await?;
    assert_error(status, &answer, 400, "cancel of id 2^64-1");
    let (status, answer) = host.get("/orders/9223372036854775807").await?;
    assert_error(status, &answer, 404, "the largest id");
    assert!(host.all("/orders").await?.len() == 1, "only the good order");
    let (_, same) = host.get(&format!("/orders/{}", order["id"])).await?;
    assert_eq!(same["id"], order["id"]);
    Ok(())
}

#[tokio::test]
async fn names_are_counted_in_characters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    // 70 Hangul syllables: 210 bytes, 70 characters.
    let hangul = "가".repeat(70);
    let (status, car) = host.post("/cars", json!({ "name": hangul, "stock": 1 })).await?;
    assert_eq!(status, 201, "{car}");
    // The customer is the token's subject.
    let order_as = |customer: &str| {
        crate::harness::client_as(customer, &["customer"])
            .post(format!("{}/orders", host.base))
            .json(&json!({ "carId": car["id"], "qty": 1 }))
    };
    let (status, order) = host.send(order_as(&hangul)).await?;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["customer"], json!(hangul));

    let long = "가".repeat(201);
    let (status, answer) = host.post("/cars", json!({ "name": long, "stock": 1 })).await?;
    assert_error(status, &answer, 400, "201 characters");
    let (status, answer) = host.send(order_as(&long)).await?;
    assert_error(status, &answer, 400, "201 characters");
    Ok(())
}

#[tokio::test]
async fn a_path_no_route_matches_is_404_and_a_wrong_method_405() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(dir.path())?;
    let car = host.car("K5", 1).await?;
    let order = host.order(car, 1).await?["id"].clone();

    for path in [
        format!("/orders/{order}/foo"),
        format!("/orders/{order}/cancel/now"),
        format!("/cars/{car}/2"),
        format!("/payments/{order}/x"),
        format!("/availability/{car}/x"),
        "/fleet/x".to_string(),
        "/ordersx".to_string(),
    ] {
        let (status, body) = host.get(&path).await?;
        assert_error(status, &body, 404, &path);
    }
    let client = crate::harness::client();
    let cases = [
        (Method::DELETE, format!("/orders/{order}"), "GET"),
        (Method::GET, format!("/orders/{order}/cancel"), "POST"),
        (Method::PUT, "/orders".to_string(), "GET, POST"),
        (Method::POST, format!("/cars/{car}"), "GET"),
        (Method::DELETE, "/payments".to_string(), "GET"),
        (Method::POST, "/availability".to_string(), "GET"),
        (Method::POST, "/fleet".to_string(), "GET"),
    ];
    for (method, path, allow) in cases {
        let response = client
            .request(method.clone(), format!("{}{path}", host.base))
            .send()
            .await?;
        let status = response.status().as_u16();
        let allowed = response
            .headers()
            .get("allow")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = response.json().await?;
        assert_error(status, &body, 405, &format!("{method} {path}"));
        assert_eq!(allowed, allow, "{method} {path}");
    }
    Ok(())
}
