//! The gateway (issue #18): every public request's bearer JWT is checked
//! before a component runs; customers see and act on their own orders and
//! payments only; rate limits per caller. Tokens are made here with
//! jsonwebtoken, as any JWT library would make them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Host, JWT_SECRET, TOKEN, client, client_as, root, runtime_toml, token};

/// The repository's runtime.toml with absolute component paths and
/// `extra` appended (an `[auth]` table, rate limits).
fn config(dir: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let runtime = std::fs::read_to_string(runtime_toml())?;
    let target = root().join("target");
    let text = runtime.replace("path = \"target/", &format!("path = \"{}/", target.display()));
    let path = dir.join("auth.toml");
    std::fs::write(&path, format!("{text}\n{extra}\n"))?;
    Ok(path)
}

fn keys() -> PathBuf {
    root().join("host/tests/e2e/keys")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "iss": "rentcar", "aud": "rentcar-api", "sub": sub, "roles": roles, "exp": now() + 600 })
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    let key = EncodingKey::from_secret(secret).expect("an HMAC key");
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).expect("a token")
}

fn signed_with(claims: &Value, alg: Algorithm, kid: &str, pem: &str) -> anyhow::Result<String> {
    let pem = std::fs::read(keys().join(pem))?;
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem)?,
        _ => EncodingKey::from_ec_pem(&pem)?,
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    Ok(jsonwebtoken::encode(&header, claims, &key)?)
}

/// `method path` with `bearer` (if any): status, body and the
/// WWW-Authenticate header.
async fn call(
    host: &Host,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Value, String)> {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", host.base));
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if path == "/orders" {
        request = request.json(&json!({ "carId": 1, "qty": 1 }));
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body, challenge))
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_refused_before_any_component_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&dir.path().join("data"))?;
    host.car("avante", 3).await?;

    // Public routes may be read without a token.
    let (status, _, _) = call(&host, reqwest::Method::GET, "/cars", None).await?;
    assert_eq!(status, 200);
    let (status, _, _) = call(&host, reqwest::Method::GET, "/availability/1", None).await?;
    assert!(status == 200 || status == 404, "{status}");

    let post = reqwest::Method::POST;
    let base = claims("kim", &["customer"]);
    let with = |patch: Value| {
        let mut claims = base.clone();
        for (key, value) in patch.as_object().expect("an object") {
            claims[key] = value.clone();
        }
        claims
    };
    let b64 = |value: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let refused = [
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".to_string())),
        (
            "expired",
            Some(hs256(&with(json!({ "exp": now() - 300 })), JWT_SECRET.as_bytes())),
        ),
        (
            "not yet valid",
            Some(hs256(&with(json!({ "nbf": now() + 300 })), JWT_SECRET.as_bytes())),
        ),
        (
            "wrong signature",
            Some(hs256(&base, b"another secret that is long enough to use")),
        ),
        (
            "wrong issuer",
            Some(hs256(&with(json!({ "iss": "someone-else" })), JWT_SECRET.as_bytes())),
        ),
        (
            "wrong audience",
            Some(hs256(&with(json!({ "aud": "another-api" })), JWT_SECRET.as_bytes())),
        ),
        (
            "no sub",
            Some(hs256(&with(json!({ "sub": null })), JWT_SECRET.as_bytes())),
        ),
        (
            "alg none",
            Some(format!(
                "{}.{}.",
                b64(json!({ "alg": "none", "typ": "JWT" })),
                b64(base.clone())
            )),
        ),
    ];
    for (what, bearer) in refused {
        let (status, body, challenge) = call(&host, post.clone(), "/orders", bearer.as_deref()).await?;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "unauthorized", "{what}: {body}");
        assert!(
            challenge.starts_with("Bearer"),
            "{what}: WWW-Authenticate is `{challenge}`"
        );
    }
    // No order was placed by any of them.
    assert!(host.all("/orders").await?.is_empty());
    let (status, _, _) = call(&host, reqwest::Method::GET, "/orders", None).await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test]
async fn tokens_of_an_identity_provider_are_checked_with_its_jwks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let jwks = keys().join("jwks.json");
    let config = config(
        dir.path(),
        &format!("[auth]\njwks = {:?}\n", jwks.display().to_string()),
    )?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    let admin = claims("ops", &["admin"]);

    let rs256 = signed_with(&admin, Algorithm::RS256, "test-rsa", "rsa.pem")?;
    let es256 = signed_with(&admin, Algorithm::ES256, "test-ec", "ec.pem")?;
    for bearer in [&rs256, &es256] {
        let (status, body, _) = call(&host, reqwest::Method::GET, "/orders", Some(bearer)).await?;
        assert_eq!(status, 200, "{body}");
    }
    // Algorithm confusion: an HS256 token "signed" with the RSA public key
    // as its secret is checked against the HS256 secret only, never
    // against a JWKS key.
    let public_pem = std::fs::read(keys().join("rsa.pub.pem"))?;
    let confused = hs256(&admin, &public_pem);
    let (status, body, _) = call(&host, reqwest::Method::GET, "/orders", Some(&confused)).await?;
    assert_eq!(status, 401, "{body}");
    // A key id the JWKS does not have.
    let unknown = signed_with(&admin, Algorithm::RS256, "rotated-away", "rsa.pem")?;
    let (status, body, _) = call(&host, reqwest::Method::GET, "/orders", Some(&unknown)).await?;
    assert_eq!(status, 401, "{body}");
    // The admin API takes the identity provider's admins too.
    let (status, body, _) = call(&host, reqwest::Method::GET, "/admin/components", Some(&rs256)).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_jwks_is_read_from_its_url_at_start() -> anyhow::Result<()> {
    // The identity provider: serves its JWKS to whoever asks.
    let jwks = std::fs::read_to_string(keys().join("jwks.json"))?;
    // A thread of its own: starting the host below blocks this one.
    let provider = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/.well-known/jwks.json", provider.local_addr()?);
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        for mut stream in provider.incoming().map_while(Result::ok) {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), &format!("[auth]\njwks = {url:?}\n"))?;
    let host = Host::start_with(&config, &dir.path().join("data"))?;
    let token = signed_with(&claims("kim", &["customer"]), Algorithm::ES256, "test-ec", "ec.pem")?;
    let (status, body, _) = call(&host, reqwest::Method::GET, "/orders", Some(&token)).await?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

#[tokio::test]
async fn customers_see_and_cancel_only_their_own_orders_and_payments() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&dir.path().join("data"))?;
    let car = host.car("k5", 5).await?;
    let kim = client_as("kim", &["customer"]);
    let lee = client_as("lee", &["customer"]);
    let url = |path: &str| format!("{}{path}", host.base);

    // The customer is the token's subject, whatever the body says.
    let (status, order) = host
        .send(
            kim.post(url("/orders"))
                .json(&json!({ "carId": car, "qty": 1, "customer": "lee" })),
        )
        .await?;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["customer"], "kim");
    let id = order["id"].as_u64().expect("order id");
    let payment = order["paymentId"].as_u64().expect("payment id");
    let (status, theirs) = host
        .send(lee.post(url("/orders")).json(&json!({ "carId": car, "qty": 1 })))
        .await?;
    assert_eq!(status, 201, "{theirs}");

    // Someone else's order or payment is as missing as one that never was.
    for path in [
        format!("/orders/{id}"),
        format!("/orders/{id}/payment"),
        format!("/payments/{payment}"),
    ] {
        let (status, body) = host.send(lee.get(url(&path))).await?;
        assert_eq!(status, 404, "{path}: {body}");
        let (status, body) = host.send(kim.get(url(&path))).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, body) = host.send(lee.post(url(&format!("/orders/{id}/cancel")))).await?;
    assert_eq!(status, 404, "{body}");

    // Lists hold the caller's own rows; an admin's hold everyone's.
    for (client, expected) in [
        (&kim, vec!["kim"]),
        (&lee, vec!["lee"]),
        (&client(), vec!["kim", "lee"]),
    ] {
        for list in ["/orders", "/payments"] {
            let (status, page) = host.send(client.get(url(list))).await?;
            assert_eq!(status, 200, "{page}");
            let customers: Vec<&str> = page["items"]
                .as_array()
                .expect("a page")
                .iter()
                .map(|item| item["customer"].as_str().unwrap_or_default())
                .collect();
            assert_eq!(customers, expected, "{list}");
        }
    }

    // A forged identity header is dropped: kim stays kim.
    let forged = kim
        .get(url("/orders"))
        .header("rentcar-identity", r#"{"kind":"user","sub":"lee","roles":["admin"]}"#);
    let (status, page) = host.send(forged).await?;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let forged = reqwest::Client::new()
        .get(url("/orders"))
        .header("rentcar-identity", r#"{"kind":"unchecked"}"#);
    assert_eq!(host.send(forged).await?.0, 401);

    // Kim cancels her own order.
    let (status, body) = host.send(kim.post(url(&format!("/orders/{id}/cancel")))).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    Ok(())
}

#[tokio::test]
async fn roles_decide_who_registers_cars_orders_and_uses_the_admin_api() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start(&dir.path().join("data"))?;
    let url = |path: &str| format!("{}{path}", host.base);
    let customer = client_as("kim", &["customer"]);
    let admin = client_as("ops", &["admin"]);
    let nobody = client_as("guest", &[]);

    let car = json!({ "name": "morning", "stock": 2 });
    let (status, body) = host.send(customer.post(url("/cars")).json(&car)).await?;
    assert_eq!((status, body["error"].clone()), (403, json!("forbidden")), "{body}");
    let (status, body) = host.send(admin.post(url("/cars")).json(&car)).await?;
    assert_eq!(status, 201, "{body}");

    let order = json!({ "carId": body["id"], "qty": 1 });
    let (status, body) = host.send(nobody.post(url("/orders")).json(&order)).await?;
    assert_eq!(status, 403, "{body}");
    let (status, body) = host.send(customer.post(url("/orders")).json(&order)).await?;
    assert_eq!(status, 201, "{body}");

    // The admin API: a customer's token is 403, an admin's 200, and the
    // operator's static token stays the break-glass.
    let (status, body) = host.send(customer.get(url("/admin/components"))).await?;
    assert_eq!((status, body["error"].clone()), (403, json!("forbidden")), "{body}");
    assert_eq!(host.send(admin.get(url("/admin/components"))).await?.0, 200);
    let break_glass = reqwest::Client::new().get(url("/admin/components")).bearer_auth(TOKEN);
    assert_eq!(host.send(break_glass).await?.0, 200);
    let (status, body) = host.send(reqwest::Client::new().get(url("/admin/components"))).await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_retry_after_and_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = "[[rate_limits]]\nprefix = \"/orders\"\nper_second = 2\nburst = 3\n";
    let host = Host::start_with(&config(dir.path(), limits)?, &dir.path().join("data"))?;
    let url = host.base.clone() + "/orders";
    let kim = client_as("kim", &["customer"]);

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let response = kim.get(&url).send().await?;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let body: Value = response.json().await?;
            assert_eq!(body["error"], "rate-limited", "{body}");
        }
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3], "the burst passes: {statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let seconds: u64 = retry_after.expect("Retry-After").parse()?;
    assert!((1..=2).contains(&seconds), "Retry-After: {seconds}");

    // Another customer has a budget of their own; other routes none.
    assert_eq!(
        client_as("lee", &["customer"]).get(&url).send().await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        kim.get(host.base.clone() + "/cars").send().await?.status(),
        StatusCode::OK
    );

    // After a while at the sustained rate, kim may call again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(kim.get(&url).send().await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn the_host_makes_a_secret_and_rentcar_host_token_signs_with_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let host = Host::start_with_own_secret(&runtime_toml(), &data)?;
    assert!(data.join("auth.key").exists(), "the generated secret is kept");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rentcar-host"))
        .args([
            "token", "--sub", "kim", "--role", "customer", "--role", "admin", "--ttl", "10m",
        ])
        .arg("--config")
        .arg(runtime_toml())
        .arg("--data-dir")
        .arg(&data)
        .env_remove("RENTCAR_JWT_SECRET")
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let minted = String::from_utf8(output.stdout)?.trim().to_string();
    let (status, body, _) = call(&host, reqwest::Method::GET, "/orders", Some(&minted)).await?;
    assert_eq!(status, 200, "{body}");
    // The tests' secret is not this host's.
    let (status, _, _) = call(&host, reqwest::Method::GET, "/orders", Some(&token("kim", &["admin"]))).await?;
    assert_eq!(status, 401);
    assert!(!host.log().contains(&minted), "tokens stay out of the log");
    Ok(())
}

#[tokio::test]
async fn with_authentication_off_the_body_names_the_customer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let host = Host::start_with(
        &config(dir.path(), "[auth]\nenabled = false\n")?,
        &dir.path().join("data"),
    )?;
    let car = host.car("ray", 2).await?;
    let anyone = reqwest::Client::new();
    let (status, order) = host
        .send(
            anyone
                .post(format!("{}/orders", host.base))
                .json(&json!({ "carId": car, "qty": 1, "customer": "park" })),
        )
        .await?;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["customer"], "park");
    for body in [
        json!({ "carId": car, "qty": 1 }),
        json!({ "carId": car, "qty": 1, "customer": "  " }),
    ] {
        let (status, answer) = host
            .send(anyone.post(format!("{}/orders", host.base)).json(&body))
            .await?;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    assert!(host.log().contains("authentication is off"));
    Ok(())
}
