//! `wasi:keyvalue` (store, atomics, batch): a component's own key-value
//! store, for contexts that want keys and values rather than tables
//! (loyalty, written in Python).
//!
//! The store lives in a host table of the component's own database
//! (`_rc_kv`, which its SQL cannot see), and every operation runs in the
//! invocation's transaction. That is the whole point of putting it there
//! rather than in a separate embedded store: an event's effect commits
//! together with its inbox row and the events it publishes, or not at
//! all, exactly as for a SQL component, and the store is bounded by the
//! same `database_mib`. Every bucket name opens a bucket of the
//! component's own store; no name reaches another component's.
//!
//! Values that `atomics.increment` counts are decimal text, as in
//! wasmtime's own implementation.

use wasmtime::component::Resource;

use crate::bindings::Bucket;
use crate::bindings::keyvalue::store::{Error, KeyResponse};
use crate::bindings::keyvalue::{atomics, batch, store};
use crate::capabilities::sql::Held;
use crate::instance::invocation::Invocation;
use crate::store::host_tables;
use crate::store::{Connection, SqlResult};

/// Longest bucket name or key, in bytes.
const MAX_KEY: usize = 1024;
/// Largest value.
const MAX_VALUE: usize = 1024 * 1024;
/// Most keys in one batch, and in one page of `list-keys`.
const MAX_BATCH: usize = 1000;

type Answer<T> = wasmtime::Result<Result<T, Error>>;

impl Invocation {
    /// Runs host-table SQL in the invocation's transaction; `f` reserves
    /// what it reads for the guest from its memory budgets. A failure that
    /// ended the transaction fails the invocation, as for the guest's own
    /// statements: nothing after it may commit on its own.
    async fn kv<R>(&mut self, f: impl FnOnce(&Connection, &mut Held<'_>) -> SqlResult<R>) -> Answer<R> {
        if let Err(reason) = self.begin_call().await? {
            return Ok(Err(Error::Other(reason)));
        }
        let (_, conn) = self.txn.parts();
        let mut held = Held::new(&mut self.limits);
        let result = f(conn, &mut held);
        held.check()?;
        self.settle(&result)?;
        Ok(result.map_err(|err| Error::Other(err.to_string())))
    }

    fn bucket(&mut self, bucket: &Resource<Bucket>) -> wasmtime::Result<String> {
        Ok(self.table().get(bucket)?.name.clone())
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY {
        return Err(Error::Other(format!("a key is at most {MAX_KEY} bytes")));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE {
        return Err(Error::Other(format!("a value is at most {MAX_VALUE} bytes")));
    }
    Ok(())
}

fn check_batch(count: usize) -> Result<(), Error> {
    if count > MAX_BATCH {
        return Err(Error::Other(format!("a batch is at most {MAX_BATCH} keys")));
    }
    Ok(())
}

/// Answers a refusal from one of the checks above.
macro_rules! refuse {
    ($check:expr) => {
        if let Err(err) = $check {
            return Ok(Err(err));
        }
    };
}

impl store::Host for Invocation {
    async fn open(&mut self, identifier: String) -> Answer<Resource<Bucket>> {
        refuse!(check_key(&identifier));
        Ok(Ok(self.table().push(Bucket { name: identifier })?))
    }
}

impl store::HostBucket for Invocation {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<Option<Vec<u8>>> {
        let name = self.bucket(&bucket)?;
        self.kv(|conn, held| {
            let value = host_tables::kv_get(conn, &name, &key)?;
            held.hold(value.as_ref().map_or(0, Vec::len))?;
            Ok(value)
        })
        .await
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Answer<()> {
        refuse!(check_key(&key).and(check_value(&value)));
        let name = self.bucket(&bucket)?;
        self.kv(|conn, _| host_tables::kv_set(conn, &name, &key, &value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<()> {
        let name = self.bucket(&bucket)?;
        self.kv(|conn, _| host_tables::kv_delete(conn, &name, &key)).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Answer<bool> {
        let name = self.bucket(&bucket)?;
        self.kv(|conn, _| host_tables::kv_get(conn, &name, &key).map(|value| value.is_some()))
            .await
    }

    /// A page of keys in the order they were first set; `cursor` resumes
    /// after the last page, whatever changed in between.
    async fn list_keys(&mut self, bucket: Resource<Bucket>, cursor: Option<u64>) -> Answer<KeyResponse> {
        let name = self.bucket(&bucket)?;
        let after = i64::try_from(cursor.unwrap_or(0)).unwrap_or(i64::MAX);
        let page = self
            .kv(|conn, held| {
                let rows = host_tables::kv_keys_after(conn, &name, after, MAX_BATCH)?;
                held.hold(rows.iter().map(|(_, key)| key.len()).sum())?;
                Ok(rows)
            })
            .await?;
        Ok(page.map(|rows| {
            let cursor = (rows.len() == MAX_BATCH).then(|| rows.last().map_or(0, |(id, _)| id.unsigned_abs()));
            KeyResponse {
                keys: rows.into_iter().map(|(_, key)| key).collect(),
                cursor,
            }
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table().delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Invocation {
    async fn increment(&mut self, bucket: Resource<Bucket>, key: String, delta: u64) -> Answer<u64> {
        refuse!(check_key(&key));
        let name = self.bucket(&bucket)?;
        let current = match self.kv(|conn, _| host_tables::kv_get(conn, &name, &key)).await? {
            Ok(value) => value,
            Err(err) => return Ok(Err(err)),
        };
        let current = match current {
            None => 0,
            Some(bytes) => match std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
            {
                Some(number) => number,
                None => return Ok(Err(Error::Other(format!("the value of `{key}` is not a decimal u64")))),
            },
        };
        let Some(next) = current.checked_add(delta) else {
            return Ok(Err(Error::Other(format!("incrementing `{key}` overflows"))));
        };
        let text = next.to_string();
        let set = self
            .kv(|conn, _| host_tables::kv_set(conn, &name, &key, text.as_bytes()))
            .await?;
        Ok(set.map(|()| next))
    }
}

impl batch::Host for Invocation {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Answer<Vec<Option<(String, Vec<u8>)>>> {
        refuse!(check_batch(keys.len()));
        let name = self.bucket(&bucket)?;
        self.kv(|conn, held| {
            keys.into_iter()
                .map(|key| {
                    let value = host_tables::kv_get(conn, &name, &key)?;
                    held.hold(key.len() + value.as_ref().map_or(0, Vec::len))?;
                    Ok(value.map(|value| (key, value)))
                })
                .collect()
        })
        .await
    }

    async fn set_many(&mut self, bucket: Resource<Bucket>, pairs: Vec<(String, Vec<u8>)>) -> Answer<()> {
        refuse!(check_batch(pairs.len()));
        for (key, value) in &pairs {
            refuse!(check_key(key).and(check_value(value)));
        }
        let name = self.bucket(&bucket)?;
        self.kv(|conn, _| {
            pairs
                .iter()
                .try_for_each(|(key, value)| host_tables::kv_set(conn, &name, key, value))
        })
        .await
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Answer<()> {
        refuse!(check_batch(keys.len()));
        let name = self.bucket(&bucket)?;
        self.kv(|conn, _| keys.iter().try_for_each(|key| host_tables::kv_delete(conn, &name, key)))
            .await
    }
}
