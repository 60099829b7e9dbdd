//! The authorizer of a component's connection: what a statement may do,
//! judged in the mode of whoever prepares it, the host or the guest.

use std::sync::atomic::{AtomicU8, Ordering};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::HOST_TABLE_PREFIX;

/// Who prepares a statement (see `Database::guest`).
pub(super) const HOST: u8 = 0;
pub(super) const GUEST: u8 = 1;
/// A guest statement that drops or renames a table or an index: SQLite then
/// updates its own bookkeeping for it, which the guest may not otherwise.
pub(super) const GUEST_DDL: u8 = 2;

pub(super) fn authorize(preparing: &AtomicU8, context: &AuthContext<'_>) -> Authorization {
    match preparing.load(Ordering::Relaxed) {
        HOST => Authorization::Allow,
        _ if matches!(
            context.action,
            AuthAction::DropTable { .. } | AuthAction::DropIndex { .. } | AuthAction::AlterTable { .. }
        ) =>
        {
            preparing.store(GUEST_DDL, Ordering::Relaxed);
            Authorization::Allow
        }
        // SQLite's own bookkeeping only: a trigger coded into the drop (by
        // a foreign key's cascade, say) is still the guest's.
        GUEST_DDL => match context.action {
            AuthAction::Delete { table_name } | AuthAction::Update { table_name, .. }
                if is_sqlite_table(table_name) && context.accessor.is_none() =>
            {
                Authorization::Allow
            }
            _ => authorize_guest(context),
        },
        _ => authorize_guest(context),
    }
}

/// What a guest statement may not do: reach another database, change the
/// connection's settings, take over the host's transaction, keep objects on
/// the connection beyond its invocation, or touch the host's tables or
/// SQLite's own bookkeeping (also from a trigger it fires).
fn authorize_guest(context: &AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Pragma { .. }
        | AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::DropVtable { .. } => Authorization::Deny,
        // TEMP tables, indexes, triggers and views live on the connection,
        // shared by every invocation, outside the database's size limit.
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => Authorization::Deny,
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Authorization::Deny
        }
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if is_host_table(table_name) =>
        {
            Authorization::Deny
        }
        // SQLite's own bookkeeping: `sqlite_sequence` also numbers the
        // host's outbox, and rewinding it would lose events.
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
            if is_sqlite_table(table_name) =>
        {
            Authorization::Deny
        }
        AuthAction::Read { table_name, .. } if is_hidden_pragma(table_name) => Authorization::Deny,
        _ => Authorization::Allow,
    }
}

fn is_host_table(name: &str) -> bool {
    name.get(..HOST_TABLE_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(HOST_TABLE_PREFIX))
}

/// Pragmas read as tables (`pragma_database_list` tells the host's data
/// path). Those with arguments also come as `Pragma`, denied above.
fn is_hidden_pragma(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("pragma_"))
}

/// `sqlite_sequence` and the planner's `sqlite_stat*`. (`sqlite_schema` is
/// written by every `CREATE`, which the authorizer judges on its own.)
fn is_sqlite_table(name: &str) -> bool {
    name.eq_ignore_ascii_case("sqlite_sequence")
        || name
            .get(..11)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("sqlite_stat"))
}
