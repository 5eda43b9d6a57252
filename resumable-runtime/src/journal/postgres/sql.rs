//! The statements of the PostgreSQL journal, written once per schema.
//!
//! Every write is one statement, so one round trip and one commit: its
//! fence (the run's epoch and state, checked under the run row's lock), its
//! change, and its bookkeeping (the lease history, a `NOTIFY`). A step
//! write, the most frequent, is a plain `INSERT … SELECT … FOR UPDATE` that
//! leaves the run row as it is but for the lock: one row written, and the
//! least work for the server. Only when it is refused does a second query
//! say why.

use super::schema::quoted;

pub(super) const RUN_COLUMNS: [&str; 14] = [
    "run_key",
    "workflow",
    "fingerprint",
    "input",
    "state",
    "outcome",
    "epoch",
    "lease_owner",
    "lease_expires_at",
    "wake_at",
    "executions",
    "last_error",
    "created_at",
    "updated_at",
];

pub(super) const STEP_COLUMNS: &str =
    "step_id, seq, state, output, attempts, last_error, retry_at, epoch, started_at, updated_at";

/// The SQL text of each operation, for one schema.
#[derive(Debug)]
pub(super) struct Statements {
    /// The quoted schema name, for statements built per call.
    pub schema: String,
    pub insert_run: String,
    pub take_lease: String,
    pub leased_by_token: String,
    pub run_leased_by_token: String,
    pub released_at: String,
    pub fence_holds: String,
    pub claim: String,
    pub select_run: String,
    pub select_steps: String,
    pub select_steps_of: String,
    pub select_step: String,
    pub step_recorded: String,
    pub step_recorded_batch: String,
    pub attempt_failed: String,
    pub run_finished: String,
    pub release: String,
    pub pin: String,
    pub renew: String,
    pub lease_history: String,
}

/// `cols` joined, each prefixed with `prefix`.
fn columns(prefix: &str) -> String {
    RUN_COLUMNS
        .iter()
        .map(|c| format!("{prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        let s = quoted(schema);
        let runs = format!("{s}.resumable_runs");
        let steps = format!("{s}.resumable_steps");
        let leases = format!("{s}.resumable_leases");
        let run = columns("");
        let r_run = columns("r.");
        // The fence of every write and renewal: `lease` ($1 key, $2 epoch) is
        // the run's current one and was not given back.
        let current =
            "run_key = $1 AND epoch = $2 AND state = 'incomplete' AND lease_owner IS NOT NULL";
        let log_lease = |from: &str| {
            format!(
                "logged AS (INSERT INTO {leases} (run_key, epoch, owner, acquired_at, expires_at) \
                 SELECT run_key, epoch, lease_owner, updated_at, lease_expires_at FROM {from})"
            )
        };
        // Ends lease ($1 key, $2 epoch) at $5 with `set` (finishing or
        // giving back the run), records that in the history and, on commit,
        // notifies channel $6 with payload $7.
        let end_lease = |set: &str| {
            format!(
                "WITH ended AS (\
                   UPDATE {runs} SET {set}, lease_owner = NULL, lease_expires_at = NULL, \
                     lease_token = NULL, updated_at = $5 \
                   WHERE {current} RETURNING run_key), \
                 history AS (UPDATE {leases} SET released_at = $5 \
                   WHERE run_key = $1 AND epoch = $2 AND EXISTS (SELECT 1 FROM ended)) \
                 SELECT count(*) FROM (SELECT pg_notify($6, $7) FROM ended) AS notified"
            )
        };
        Statements {
            insert_run: format!(
                "WITH inserted AS (\
                   INSERT INTO {runs} (run_key, workflow, fingerprint, input, state, epoch, lease_owner, \
                     lease_expires_at, lease_token, wake_at, executions, created_at, updated_at) \
                   VALUES ($1, $2, $3, $4, 'incomplete', 1, $5, $6, $7, $8, 1, $8, $8) \
                   ON CONFLICT (run_key) DO NOTHING RETURNING {run}), \
                 {} \
                 SELECT {run} FROM inserted",
                log_lease("inserted")
            ),
            // $1 key, $2 owner, $3 until, $4 token, $5 now.
            take_lease: format!(
                "WITH taken AS (\
                   UPDATE {runs} SET epoch = epoch + 1, executions = LEAST(executions, 2147483646) + 1, \
                     lease_owner = $2, lease_expires_at = $3, lease_token = $4, updated_at = $5 \
                   WHERE run_key = $1 AND state = 'incomplete' AND (lease_owner IS NULL \
                     OR lease_expires_at IS NULL OR lease_expires_at <= $5) \
                   RETURNING {run}), \
                 {} \
                 SELECT {run} FROM taken",
                log_lease("taken")
            ),
            // The runs a lease request ($1 token) took: after a lost reply,
            // its retry returns these instead of taking leases again.
            leased_by_token: format!(
                "SELECT {run} FROM {runs} WHERE lease_token = $1 \
                 ORDER BY wake_at, id"
            ),
            // Run $1 if lease request $2 took it.
            run_leased_by_token: format!(
                "SELECT {run} FROM {runs} \
                 WHERE run_key = $1 AND lease_token = $2 AND state = 'incomplete'"
            ),
            // When lease ($1 key, $2 epoch) was given back, if it was.
            // Whether lease ($1 key, $2 epoch) is still the run's: after a
            // step write was refused, whether the fence refused it.
            fence_holds: format!("SELECT count(*) FROM {runs} WHERE {current}"),
            released_at: format!(
                "SELECT released_at FROM {leases} WHERE run_key = $1 AND epoch = $2"
            ),
            // $1 now, $2 owner, $3 until, $4 token, $5 limit.
            claim: format!(
                "WITH due AS (\
                   SELECT id FROM {runs} \
                   WHERE state = 'incomplete' AND wake_at <= $1 AND (lease_owner IS NULL \
                     OR lease_expires_at IS NULL OR lease_expires_at <= $1) \
                   ORDER BY wake_at, id LIMIT $5 FOR UPDATE SKIP LOCKED), \
                 taken AS (\
                   UPDATE {runs} r SET epoch = r.epoch + 1, \
                     executions = LEAST(r.executions, 2147483646) + 1, lease_owner = $2, \
                     lease_expires_at = $3, lease_token = $4, updated_at = $1 \
                   FROM due WHERE r.id = due.id RETURNING r.id, {r_run}), \
                 {} \
                 SELECT {run} FROM taken ORDER BY wake_at, id",
                log_lease("taken")
            ),
            select_run: format!("SELECT {run} FROM {runs} WHERE run_key = $1"),
            select_steps: format!(
                "SELECT {STEP_COLUMNS} FROM {steps} WHERE run_key = $1 \
                 ORDER BY seq NULLS LAST, step_id"
            ),
            select_steps_of: format!(
                "SELECT run_key, {STEP_COLUMNS} FROM {steps} WHERE run_key = ANY($1) \
                 ORDER BY run_key, seq NULLS LAST, step_id"
            ),
            select_step: format!(
                "SELECT state, epoch, output FROM {steps} WHERE run_key = $1 AND step_id = $2"
            ),
            // $1 key, $2 epoch, $3 step, $4 seq, $5 state, $6 output,
            // $7 attempts, $8 started_at, $9 at, $10 error.
            step_recorded: format!(
                "INSERT INTO {steps} AS s (run_key, step_id, seq, state, output, attempts, epoch, \
                   started_at, updated_at, last_error) \
                 SELECT run_key, $3::text, $4::bigint, $5::text, $6::bytea, $7::integer, $2::bigint, \
                   $8::bigint, $9::bigint, $10::text FROM {runs} WHERE {current} FOR UPDATE \
                 ON CONFLICT (run_key, step_id) DO UPDATE SET seq = excluded.seq, \
                   state = excluded.state, output = excluded.output, attempts = excluded.attempts, \
                   retry_at = NULL, last_error = COALESCE(excluded.last_error, s.last_error), \
                   epoch = excluded.epoch, started_at = excluded.started_at, \
                   updated_at = excluded.updated_at \
                 WHERE s.state = 'retrying' RETURNING 1"
            ),
            // Many steps of `step_recorded` as parallel arrays: $1 keys,
            // $2 epochs, $3 steps, $4 seqs, $5 states, $6 outputs,
            // $7 attempts, $8 started_at, $9 at, $10 errors. Locks the runs
            // in key order, so that two batches never wait for each other in
            // a cycle; returns the steps it wrote.
            step_recorded_batch: format!(
                "WITH fence AS (\
                   SELECT run_key, epoch FROM {runs} \
                   WHERE run_key = ANY($1::text[]) AND state = 'incomplete' \
                     AND lease_owner IS NOT NULL \
                   ORDER BY run_key FOR UPDATE) \
                 INSERT INTO {steps} AS s (run_key, step_id, seq, state, output, attempts, epoch, \
                   started_at, updated_at, last_error) \
                 SELECT b.run_key, b.step_id, b.seq, b.state, b.output, b.attempts, b.epoch, \
                   b.started_at, b.updated_at, b.last_error \
                 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
                   $6::bytea[], $7::integer[], $8::bigint[], $9::bigint[], $10::text[]) \
                   AS b(run_key, epoch, step_id, seq, state, output, attempts, started_at, \
                     updated_at, last_error) \
                 JOIN fence f ON f.run_key = b.run_key AND f.epoch = b.epoch \
                 ON CONFLICT (run_key, step_id) DO UPDATE SET seq = excluded.seq, \
                   state = excluded.state, output = excluded.output, attempts = excluded.attempts, \
                   retry_at = NULL, last_error = COALESCE(excluded.last_error, s.last_error), \
                   epoch = excluded.epoch, started_at = excluded.started_at, \
                   updated_at = excluded.updated_at \
                 WHERE s.state = 'retrying' RETURNING s.run_key, s.step_id"
            ),
            // $1 key, $2 epoch, $3 step, $4 attempts, $5 error, $6 retry_at,
            // $7 started_at, $8 at.
            attempt_failed: format!(
                "INSERT INTO {steps} AS s (run_key, step_id, state, attempts, last_error, retry_at, \
                   epoch, started_at, updated_at) \
                 SELECT run_key, $3::text, 'retrying', $4::integer, $5::text, $6::bigint, $2::bigint, \
                   $7::bigint, $8::bigint FROM {runs} WHERE {current} FOR UPDATE \
                 ON CONFLICT (run_key, step_id) DO UPDATE SET seq = NULL, state = excluded.state, \
                   output = NULL, attempts = excluded.attempts, last_error = excluded.last_error, \
                   retry_at = excluded.retry_at, epoch = excluded.epoch, \
                   started_at = excluded.started_at, updated_at = excluded.updated_at \
                 WHERE s.state = 'retrying' RETURNING 1"
            ),
            // $1 key, $2 epoch, $3 state, $4 outcome, $5 at, $6 channel, $7 payload.
            run_finished: end_lease("state = $3, outcome = $4"),
            // $1 key, $2 epoch, $3 last_error, $4 wake_at, $5 at, $6 channel, $7 payload.
            release: end_lease("last_error = $3, wake_at = $4"),
            // $1 key, $2 epoch, $3 fingerprint, $4 at.
            pin: format!(
                "UPDATE {runs} SET fingerprint = CASE WHEN fingerprint = 0 THEN $3 ELSE fingerprint END, \
                 updated_at = $4 WHERE {current}"
            ),
            // $1 key, $2 epoch, $3 until.
            renew: format!(
                "WITH renewed AS (\
                   UPDATE {runs} SET lease_expires_at = $3 \
                   WHERE {current} RETURNING run_key), \
                 logged AS (UPDATE {leases} SET expires_at = $3 \
                   WHERE run_key = $1 AND epoch = $2 AND EXISTS (SELECT 1 FROM renewed)) \
                 SELECT count(*) FROM renewed"
            ),
            lease_history: format!(
                "SELECT epoch, owner, acquired_at, expires_at, released_at FROM {leases} \
                 WHERE run_key = $1 ORDER BY epoch"
            ),
            schema: s,
        }
    }

    /// `list_runs` with only the filter's conditions, so that a workflow
    /// filter can use its index. Parameters are numbered in the order
    /// state, workflow, lease owner, limit, skipping absent ones.
    pub(super) fn list_runs(&self, state: bool, workflow: bool, owner: bool) -> String {
        let mut sql = format!(
            "SELECT {} FROM {}.resumable_runs WHERE true",
            columns(""),
            self.schema
        );
        let mut n = 0;
        for (present, column) in [
            (state, "state"),
            (workflow, "workflow"),
            (owner, "lease_owner"),
        ] {
            if present {
                n += 1;
                sql.push_str(&format!(" AND {column} = ${n}"));
            }
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", n + 1));
        sql
    }
}
