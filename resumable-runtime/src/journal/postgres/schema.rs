//! The PostgreSQL journal's tables, created and upgraded by versioned
//! migrations inside the user's chosen schema.

use tokio_postgres::Client;

use super::pg_error;
use crate::error::{Error, Result};

/// Migrations in order; the version of each is its index plus one. Append
/// only: a released migration never changes, since databases record which
/// versions they have applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("runs, steps and lease history", V1),
    (
        "run lifecycle: deadlines, cancels, dead letters, resumes, forks",
        V2,
    ),
    (
        "steps and leases refer to their run by id; room for HOT updates",
        V3,
    ),
    ("messages sent to runs", V4),
];

/// The newest schema version this code reads and writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `{s}` stands for the quoted schema name.
const V1: &str = r#"
CREATE TABLE {s}.resumable_runs (
    -- Insertion order: list_runs' 'oldest first' and claim_due's tie-break.
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key          TEXT    NOT NULL UNIQUE,
    workflow         TEXT    NOT NULL,
    fingerprint      BIGINT  NOT NULL, -- u64 bits stored as i64
    input            BYTEA   NOT NULL,
    state            TEXT    NOT NULL,
    outcome          BYTEA,
    epoch            BIGINT  NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    -- Random per lease request: lets a request whose reply was lost with
    -- its connection recognise, on retry, the lease it already took.
    lease_token      BIGINT,
    wake_at          BIGINT  NOT NULL,
    executions       INTEGER NOT NULL,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);
CREATE INDEX resumable_runs_due ON {s}.resumable_runs (wake_at, id) WHERE state = 'incomplete';
CREATE INDEX resumable_runs_workflow ON {s}.resumable_runs (workflow, id);
-- Finds the leases of a request retried after its reply was lost.
CREATE INDEX resumable_runs_lease_token ON {s}.resumable_runs (lease_token)
    WHERE lease_token IS NOT NULL;
CREATE TABLE {s}.resumable_steps (
    run_key    TEXT    NOT NULL,
    step_id    TEXT    NOT NULL,
    seq        BIGINT,
    state      TEXT    NOT NULL,
    output     BYTEA,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    retry_at   BIGINT,
    epoch      BIGINT  NOT NULL,
    started_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (run_key, step_id)
);
-- One row per lease ever granted: who held each epoch of a run, and until when.
CREATE TABLE {s}.resumable_leases (
    run_key     TEXT   NOT NULL,
    epoch       BIGINT NOT NULL,
    owner       TEXT   NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL, -- as last renewed
    released_at BIGINT,          -- set when given back or finished
    PRIMARY KEY (run_key, epoch)
);
"#;

const V2: &str = r#"
ALTER TABLE {s}.resumable_runs
    ADD COLUMN deadline BIGINT,
    ADD COLUMN cancel_requested_at BIGINT,
    ADD COLUMN failures INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN resumed_at BIGINT,
    ADD COLUMN forked_from TEXT;
CREATE INDEX resumable_runs_finished ON {s}.resumable_runs (updated_at, id)
    WHERE state IN ('completed', 'failed', 'cancelled', 'deadline_exceeded');
CREATE INDEX resumable_runs_state ON {s}.resumable_runs (state, id);
CREATE INDEX resumable_runs_lease_owner ON {s}.resumable_runs (lease_owner)
    WHERE lease_owner IS NOT NULL;
"#;

/// Brings `schema` to [`SCHEMA_VERSION`] in one transaction, creating it if
/// needed. Concurrent callers (workers starting together) wait for each
/// other on an advisory lock, so each migration is applied once. A schema
/// already newer than this code is refused before anything changes.
/// Version 3: steps and lease history refer to their run by its id instead
/// of repeating its key in every row and in the primary key (a smaller
/// journal; a run re-created under the key of one deleted by hand meets
/// none of its rows; the tables are rebuilt rather than updated in place,
/// which would leave a dead version of every row). Rows whose run no longer
/// exists (only ever left by editing the tables by hand) are not carried
/// over. Run rows leave a tenth of each page free, so that an update
/// touching no indexed column (renewing a lease, the most frequent) stays
/// on its page as a HOT update. No statement of the journal gains from
/// parallel workers (each reads a few rows through an index), but on tables
/// whose statistics were never gathered the planner over-estimates and
/// started them (30 ms to read a run's 10 steps at a million runs): the
/// tables ask for none.
const V3: &str = r#"
CREATE TABLE {s}.resumable_steps_v3 (
    run_id     BIGINT  NOT NULL, -- resumable_runs.id, never reused
    step_id    TEXT    NOT NULL,
    seq        BIGINT,
    state      TEXT    NOT NULL,
    output     BYTEA,
    attempts   INTEGER NOT NULL,
    last_error TEXT,
    retry_at   BIGINT,
    epoch      BIGINT  NOT NULL,
    started_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
INSERT INTO {s}.resumable_steps_v3 (run_id, step_id, seq, state, output, attempts, last_error,
    retry_at, epoch, started_at, updated_at)
SELECT r.id, s.step_id, s.seq, s.state, s.output, s.attempts, s.last_error, s.retry_at,
    s.epoch, s.started_at, s.updated_at
FROM {s}.resumable_steps s JOIN {s}.resumable_runs r ON r.run_key = s.run_key;
DROP TABLE {s}.resumable_steps;
ALTER TABLE {s}.resumable_steps_v3 RENAME TO resumable_steps;
ALTER TABLE {s}.resumable_steps ADD CONSTRAINT resumable_steps_pkey PRIMARY KEY (run_id, step_id);
CREATE TABLE {s}.resumable_leases_v3 (
    run_id      BIGINT NOT NULL, -- resumable_runs.id
    epoch       BIGINT NOT NULL,
    owner       TEXT   NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL, -- as last renewed
    released_at BIGINT           -- set when given back or finished
);
INSERT INTO {s}.resumable_leases_v3 (run_id, epoch, owner, acquired_at, expires_at, released_at)
SELECT r.id, l.epoch, l.owner, l.acquired_at, l.expires_at, l.released_at
FROM {s}.resumable_leases l JOIN {s}.resumable_runs r ON r.run_key = l.run_key;
DROP TABLE {s}.resumable_leases;
ALTER TABLE {s}.resumable_leases_v3 RENAME TO resumable_leases;
ALTER TABLE {s}.resumable_leases ADD CONSTRAINT resumable_leases_pkey PRIMARY KEY (run_id, epoch);
ALTER TABLE {s}.resumable_runs SET (fillfactor = 90, parallel_workers = 0);
ALTER TABLE {s}.resumable_steps SET (parallel_workers = 0);
ALTER TABLE {s}.resumable_leases SET (parallel_workers = 0);
-- The last value of each event a run published.
CREATE TABLE {s}.resumable_events (
    run_id     BIGINT NOT NULL, -- resumable_runs.id
    name       TEXT   NOT NULL,
    value      BYTEA  NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, name)
) WITH (parallel_workers = 0);
-- The leased runs in creation order (a completer's look for runs of dead
-- workers), whatever the number of incomplete runs.
CREATE INDEX resumable_runs_leased ON {s}.resumable_runs (state, id) WHERE lease_owner IS NOT NULL;
-- Statistics for the rebuilt tables, so that plans are right from the start.
ANALYZE {s}.resumable_runs, {s}.resumable_steps, {s}.resumable_leases, {s}.resumable_events;
"#;

const V4: &str = r#"
ALTER TABLE {s}.resumable_runs
    ADD COLUMN messages_sent  BIGINT  NOT NULL DEFAULT 0,    -- messages ever sent to the run
    ADD COLUMN awaits_message BOOLEAN NOT NULL DEFAULT false; -- given back to wait for one
CREATE TABLE {s}.resumable_messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- sending order
    run_id          BIGINT NOT NULL, -- resumable_runs.id
    topic           TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    value           BYTEA,           -- NULL once a receive took it
    sent_at         BIGINT NOT NULL,
    taken_by        TEXT,            -- the receive's step id
    UNIQUE (run_id, idempotency_key)
) WITH (parallel_workers = 0);
-- A run's messages not yet taken, by topic, oldest first.
CREATE INDEX resumable_messages_waiting ON {s}.resumable_messages (run_id, topic, id)
    WHERE taken_by IS NULL;
-- The run that started this one as a child, and its children in order.
ALTER TABLE {s}.resumable_runs ADD COLUMN parent TEXT;
CREATE INDEX resumable_runs_parent ON {s}.resumable_runs (parent, id) WHERE parent IS NOT NULL;
-- A child that finishes, by whatever statement, sends its parent a message
-- (see Write::StartChild): its state, a zero byte, its outcome.
CREATE FUNCTION {s}.resumable_child_finished() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    parent_id bigint;
    woken boolean;
    stored integer;
BEGIN
    SELECT id, awaits_message AND state = 'incomplete' INTO parent_id, woken
        FROM {s}.resumable_runs WHERE run_key = NEW.parent FOR UPDATE;
    IF parent_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO {s}.resumable_messages (run_id, topic, idempotency_key, value, sent_at)
        VALUES (parent_id, 'child:' || NEW.run_key, 'finished:' || NEW.run_key || '#' || NEW.epoch,
            convert_to(NEW.state, 'UTF8') || '\x00'::bytea || COALESCE(NEW.outcome, '\x'::bytea),
            NEW.updated_at)
        ON CONFLICT (run_id, idempotency_key) DO NOTHING;
    GET DIAGNOSTICS stored = ROW_COUNT;
    IF stored > 0 THEN
        UPDATE {s}.resumable_runs SET messages_sent = messages_sent + 1, awaits_message = false,
            wake_at = CASE WHEN woken THEN NEW.updated_at ELSE wake_at END
            WHERE id = parent_id;
        PERFORM pg_notify('{channel}', 'm:' || NEW.parent);
        IF woken THEN
            PERFORM pg_notify('{channel}', 'd:' || NEW.updated_at);
        END IF;
    END IF;
    RETURN NULL;
END;
$fn$;
CREATE TRIGGER resumable_child_finished AFTER UPDATE OF state ON {s}.resumable_runs
    FOR EACH ROW WHEN (NEW.parent IS NOT NULL
        AND NEW.state IN ('completed', 'failed', 'cancelled', 'deadline_exceeded')
        AND OLD.state NOT IN ('completed', 'failed', 'cancelled', 'deadline_exceeded'))
    EXECUTE FUNCTION {s}.resumable_child_finished();
"#;

pub(super) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    migrate_to(client, schema, MIGRATIONS.len()).await
}

/// Applies the migrations up to version `target` (tests start from an
/// older version with it).
pub(super) async fn migrate_to(client: &mut Client, schema: &str, target: usize) -> Result<()> {
    let s = quoted(schema);
    let tx = client.transaction().await.map_err(pg_error)?;
    // Serialises migrations of this schema across processes and machines.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('resumable.migrate'), hashtext($1))",
        &[&schema],
    )
    .await
    .map_err(pg_error)?;
    // Only if missing: a role that owns an existing schema need not be
    // allowed to create schemas in the database.
    let exists = tx
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(pg_error)?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA {s}"))
            .await
            .map_err(pg_error)?;
    }
    // Likewise, a role that may only use the schema can open a journal
    // whose tables exist.
    let table = format!("{s}.resumable_migrations");
    let has_table = tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .and_then(|row| row.try_get::<_, bool>(0))
        .map_err(pg_error)?;
    if !has_table {
        tx.batch_execute(&format!(
            "CREATE TABLE {s}.resumable_migrations (
             version     BIGINT      PRIMARY KEY,
             description TEXT        NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
        ))
        .await
        .map_err(pg_error)?;
    }
    let found: i64 = tx
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {s}.resumable_migrations"),
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(pg_error)?;
    if found > SCHEMA_VERSION {
        // Dropping `tx` rolls back: nothing was changed.
        return Err(Error::SchemaVersion {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let pending = MIGRATIONS
        .iter()
        .enumerate()
        .take(target)
        .skip(found as usize);
    for (index, (description, sql)) in pending {
        let version = index as i64 + 1;
        let sql = sql
            .replace("{s}", &s)
            .replace("{channel}", &super::listener::channel(schema));
        tx.batch_execute(&sql).await.map_err(pg_error)?;
        tx.execute(
            &format!("INSERT INTO {s}.resumable_migrations (version, description) VALUES ($1, $2)"),
            &[&version, description],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(schema, version, description, "applied journal migration");
    }
    tx.commit().await.map_err(pg_error)
}

/// The schema name as an SQL identifier.
pub(super) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Longest accepted schema name: the notification channel adds 10 bytes to
/// it, and PostgreSQL identifiers stop at 63.
pub(super) const MAX_SCHEMA_NAME: usize = 48;

/// Whether `schema` is a name this journal accepts: lower-case ASCII
/// letters, digits and `_`, not starting with a digit or `pg_`, at most
/// [`MAX_SCHEMA_NAME`] bytes. Returns why not.
pub(super) fn check_schema_name(schema: &str) -> Result<(), &'static str> {
    let mut chars = schema.chars();
    match chars.next() {
        None => Err("it is empty"),
        _ if schema.len() > MAX_SCHEMA_NAME => Err("it is longer than 48 bytes"),
        _ if schema.starts_with("pg_") => Err("names starting with pg_ are PostgreSQL's"),
        Some(first) if !(first.is_ascii_lowercase() || first == '_') => {
            Err("it must start with a lower-case letter or _")
        }
        _ if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') => {
            Err("it may only hold lower-case letters, digits and _")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for ok in ["resumable", "_x", "tenant_42", &"a".repeat(48)] {
            assert_eq!(check_schema_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Resumable",
            "1abc",
            "pg_temp",
            "a-b",
            "a\"; DROP",
            &"a".repeat(49),
        ] {
            assert!(check_schema_name(bad).is_err(), "{bad}");
        }
    }
}
