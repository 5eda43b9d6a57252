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

pub(super) const RUN_COLUMNS: [&str; 20] = [
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
    "deadline",
    "cancel_requested_at",
    "failures",
    "resumed_at",
    "forked_from",
    "parent",
];

/// The states of finished runs, as an SQL list.
pub(super) const FINISHED: &str = "('completed', 'failed', 'cancelled', 'deadline_exceeded')";

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
    pub create_run: String,
    pub set_event: String,
    pub get_event: String,
    pub send_message: String,
    pub receive: String,
    pub start_child: String,
    pub set_aside: String,
    pub dead_letter: String,
    pub release_many: String,
    pub cancel: String,
    pub resume: String,
    pub retry_now: String,
    pub fork: String,
    pub purge: String,
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
        let events = format!("{s}.resumable_events");
        let messages = format!("{s}.resumable_messages");
        let run = columns("");
        let r_run = columns("r.");
        // The fence of every write and renewal: `lease` ($1 key, $2 epoch) is
        // the run's current one and was not given back.
        let current =
            "run_key = $1 AND epoch = $2 AND state = 'incomplete' AND lease_owner IS NOT NULL";
        let log_lease = |from: &str| {
            format!(
                "logged AS (INSERT INTO {leases} (run_id, epoch, owner, acquired_at, expires_at) \
                 SELECT id, epoch, lease_owner, updated_at, lease_expires_at FROM {from} \
                 WHERE lease_owner IS NOT NULL)"
            )
        };
        // A run whose cancel was requested ends cancelled, whatever `set` says.
        let or_cancelled = |state: &str| {
            format!("CASE WHEN cancel_requested_at IS NULL THEN {state} ELSE 'cancelled' END")
        };
        // Ends lease ($1 key, $2 epoch) at $3 with `set` (its own parameters
        // from $7 on: finishing, giving back or dead-lettering the run), records
        // that in the history and, on commit, notifies channel $4 with payload
        // $5 (if not empty), or $6 if the run was cancelled instead. Returns
        // whether the lease was ended, and whether the run was cancelled.
        let end_lease = |set: &str| {
            format!(
                "WITH ended AS (\
                   UPDATE {runs} SET {set}, lease_owner = NULL, lease_expires_at = NULL, \
                     lease_token = NULL, updated_at = $3 \
                   WHERE {current} RETURNING id, cancel_requested_at IS NOT NULL AS cancelled), \
                 history AS (UPDATE {leases} SET released_at = $3 \
                   WHERE run_id = (SELECT id FROM ended) AND epoch = $2) \
                 SELECT (SELECT count(*) FROM ended), COALESCE((SELECT bool_or(cancelled) FROM ended), false), \
                   (SELECT count(*) FROM (SELECT pg_notify($4, CASE WHEN cancelled THEN $6 ELSE $5 END) \
                     FROM ended WHERE cancelled OR $5 <> '') AS notified)"
            )
        };
        // 1 if run `r`'s current epoch recorded no step, else 0.
        let no_progress = |r: &str| {
            format!(
                "(CASE WHEN EXISTS (SELECT 1 FROM {steps} s \
                   WHERE s.run_id = {r}.id AND s.epoch = {r}.epoch) THEN 0 ELSE 1 END)"
            )
        };
        // The id of run `$1`, for statements on its steps.
        let run_id = format!("(SELECT id FROM {runs} WHERE run_key = $1)");
        // 1 if run `r`'s lease is taken over from a worker that died
        // without recording a step under it, else 0.
        let taken_over = format!(
            "(CASE WHEN r.lease_owner IS NULL THEN 0 ELSE {} END)",
            no_progress("r")
        );
        Statements {
            // A new run never meets step records of an earlier one: steps
            // refer to runs by an id that is never reused.
            insert_run: format!(
                "WITH inserted AS (\
                   INSERT INTO {runs} (run_key, workflow, fingerprint, input, state, epoch, lease_owner, \
                     lease_expires_at, lease_token, wake_at, executions, created_at, updated_at, deadline) \
                   VALUES ($1, $2, $3, $4, 'incomplete', 1, $5, $6, $7, $8, 1, $8, $8, $9) \
                   ON CONFLICT (run_key) DO NOTHING RETURNING id, {run}), \
                 {} \
                 SELECT {run} FROM inserted",
                log_lease("inserted")
            ),
            // $1 key, $2 owner, $3 until, $4 token, $5 now.
            take_lease: format!(
                "WITH taken AS (\
                   UPDATE {runs} r SET epoch = epoch + 1, executions = LEAST(executions, 2147483646) + 1, \
                     failures = LEAST(failures, 2147483646) + {taken_over}, \
                     lease_owner = $2, lease_expires_at = $3, lease_token = $4, updated_at = $5 \
                   WHERE run_key = $1 AND state = 'incomplete' AND (lease_owner IS NULL \
                     OR lease_expires_at IS NULL OR lease_expires_at <= $5) \
                   RETURNING id, {run}), \
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
            fence_holds: format!(
                "SELECT cancel_requested_at IS NOT NULL FROM {runs} WHERE {current}"
            ),
            // $1 key, $2 workflow, $3 fingerprint, $4 input, $5 now, $6 deadline.
            create_run: format!(
                "INSERT INTO {runs} (run_key, workflow, fingerprint, input, state, epoch, wake_at, \
                   executions, created_at, updated_at, deadline) \
                 VALUES ($1, $2, $3, $4, 'incomplete', 0, $5, 0, $5, $5, $6) \
                 ON CONFLICT (run_key) DO NOTHING RETURNING {run}"
            ),
            // $1 key, $2 epoch, $3 name, $4 value, $5 at: fenced like a step
            // write; returns whether a cancel is requested.
            set_event: format!(
                "WITH fence AS (SELECT id, cancel_requested_at IS NOT NULL AS cancel \
                   FROM {runs} WHERE {current} FOR UPDATE), \
                 stored AS (INSERT INTO {events} AS e (run_id, name, value, updated_at) \
                   SELECT id, $3, $4, $5 FROM fence \
                   ON CONFLICT (run_id, name) DO UPDATE SET value = excluded.value, \
                     updated_at = excluded.updated_at) \
                 SELECT cancel FROM fence"
            ),
            get_event: format!("SELECT value FROM {events} WHERE run_id = {run_id} AND name = $2"),
            // $1 key, $2 topic, $3 idempotency key, $4 value, $5 at, $6
            // channel, $7 message payload, $8 due payload. Under the run
            // row's lock, as a release is: a run given back to wait for a
            // message becomes due. Returns whether the run exists, whether
            // the message was stored, and whether it woke the run.
            send_message: format!(
                "WITH run AS (SELECT id, awaits_message AND state = 'incomplete' AS woken \
                   FROM {runs} WHERE run_key = $1 FOR UPDATE), \
                 stored AS (INSERT INTO {messages} (run_id, topic, idempotency_key, value, sent_at) \
                   SELECT id, $2, $3, $4, $5 FROM run \
                   ON CONFLICT (run_id, idempotency_key) DO NOTHING RETURNING run_id), \
                 counted AS (UPDATE {runs} r SET messages_sent = r.messages_sent + 1, \
                   awaits_message = false, wake_at = CASE WHEN run.woken THEN $5 ELSE r.wake_at END \
                   FROM run WHERE r.id = run.id AND EXISTS (SELECT 1 FROM stored) RETURNING r.id), \
                 notified AS (SELECT pg_notify($6, $7) FROM counted \
                   UNION ALL SELECT pg_notify($6, $8) FROM run \
                     WHERE run.woken AND EXISTS (SELECT 1 FROM stored)) \
                 SELECT (SELECT count(*) FROM run), (SELECT count(*) FROM stored), \
                   COALESCE((SELECT woken FROM run), false) AND EXISTS (SELECT 1 FROM stored), \
                   (SELECT count(*) FROM notified)"
            ),
            // $1 key, $2 epoch, $3 step id, $4 seq, $5 child key, $6
            // workflow, $7 fingerprint, $8 input, $9 at, $10 deadline, $11
            // the step's output, $12 channel, $13 the child's due payload:
            // fenced like a step write. Unless a cancel is
            // requested, the step is recorded or the key exists, creates the
            // child and records the step. Returns
            // whether a cancel is requested, whether the step was recorded
            // already (and its output), and whether the step was recorded now.
            start_child: format!(
                "WITH fence AS (SELECT id, cancel_requested_at IS NOT NULL AS cancel \
                   FROM {runs} WHERE {current} FOR UPDATE), \
                 already AS (SELECT s.output FROM {steps} s JOIN fence ON s.run_id = fence.id \
                   WHERE s.step_id = $3 AND s.state <> 'retrying'), \
                 existing AS (SELECT parent FROM {runs} WHERE run_key = $5), \
                 created AS (INSERT INTO {runs} (run_key, workflow, fingerprint, input, state, epoch, \
                     wake_at, executions, created_at, updated_at, deadline, parent) \
                   SELECT $5, $6, $7, $8, 'incomplete', 0, $9, 0, $9, $9, $10, $1 FROM fence \
                   WHERE NOT fence.cancel AND NOT EXISTS (SELECT 1 FROM already) \
                     AND NOT EXISTS (SELECT 1 FROM existing) \
                   ON CONFLICT (run_key) DO NOTHING RETURNING id), \
                 recorded AS (INSERT INTO {steps} (run_id, step_id, seq, state, output, attempts, \
                     epoch, started_at, updated_at) \
                   SELECT fence.id, $3, $4, 'completed', $11, 1, $2, $9, $9 FROM fence \
                   WHERE EXISTS (SELECT 1 FROM created) \
                   ON CONFLICT (run_id, step_id) DO UPDATE SET seq = excluded.seq, \
                     state = excluded.state, output = excluded.output, attempts = excluded.attempts, \
                     retry_at = NULL, epoch = excluded.epoch, updated_at = excluded.updated_at \
                   RETURNING run_id), \
                 notified AS (SELECT pg_notify($12, $13) FROM created) \
                 SELECT cancel, (SELECT output FROM already), EXISTS (SELECT 1 FROM recorded), \
                   (SELECT count(*) FROM notified) \
                 FROM fence"
            ),
            // $1 key, $2 epoch, $3 topic, $4 step id, $5 seq, $6 at: fenced
            // like a step write. Takes the oldest message on the topic not
            // yet taken and records it as the step. The count of messages
            // sent is read from the statement's snapshot, as the messages
            // are, not from the locked (possibly newer) row: a message
            // committed while the fence waited for the lock is then counted
            // as unseen, and the run's release wakes it. Returns whether a cancel
            // is requested, the messages sent to the run, the message taken
            // (if one was), and whether the step was recorded.
            receive: format!(
                "WITH fence AS (SELECT id, cancel_requested_at IS NOT NULL AS cancel \
                   FROM {runs} WHERE {current} FOR UPDATE), \
                 counted AS (SELECT messages_sent FROM {runs} WHERE run_key = $1), \
                 oldest AS (SELECT m.id, m.value FROM {messages} m JOIN fence ON m.run_id = fence.id \
                   WHERE m.topic = $3 AND m.taken_by IS NULL AND m.value IS NOT NULL \
                   ORDER BY m.id LIMIT 1 FOR UPDATE OF m), \
                 recorded AS (INSERT INTO {steps} (run_id, step_id, seq, state, output, attempts, \
                     epoch, started_at, updated_at) \
                   SELECT fence.id, $4, $5, 'completed', oldest.value, 1, $2, $6, $6 \
                   FROM fence CROSS JOIN oldest \
                   ON CONFLICT (run_id, step_id) DO NOTHING RETURNING run_id), \
                 taken AS (UPDATE {messages} SET value = NULL, taken_by = $4 \
                   WHERE id = (SELECT id FROM oldest) AND EXISTS (SELECT 1 FROM recorded)) \
                 SELECT cancel, (SELECT messages_sent FROM counted), (SELECT value FROM oldest), \
                   EXISTS (SELECT 1 FROM recorded) FROM fence"
            ),
            // $1 key, $2 last_error: a run whose rows cannot be read.
            set_aside: format!(
                "UPDATE {runs} SET state = 'dead_lettered', last_error = $2, lease_owner = NULL, \
                 lease_expires_at = NULL, lease_token = NULL WHERE run_key = $1"
            ),
            // $1 key, $2 epoch, $3 at, $4 channel, $5 payload, $6 if
            // cancelled, $7 last_error, $8 failures.
            dead_letter: end_lease(&format!(
                "state = {}, outcome = NULL, last_error = $7, failures = $8",
                or_cancelled("'dead_lettered'")
            )),
            // Leases given back together: $1 keys, $2 epochs, $3 last_error,
            // $4 at, $5 channel, $6 due payload, $7 finished payload prefix.
            release_many: format!(
                "WITH ended AS (\
                   UPDATE {runs} r SET state = {state}, \
                     outcome = NULL, last_error = $3, wake_at = $4, lease_owner = NULL, \
                     failures = LEAST(r.failures, 2147483646) + {no_progress}, \
                     lease_expires_at = NULL, lease_token = NULL, updated_at = $4 \
                   FROM unnest($1::text[], $2::bigint[]) AS l(run_key, epoch) \
                   WHERE r.run_key = l.run_key AND r.epoch = l.epoch AND r.state = 'incomplete' \
                     AND r.lease_owner IS NOT NULL \
                   RETURNING r.id, r.run_key, r.epoch, r.cancel_requested_at IS NOT NULL AS cancelled), \
                 history AS (UPDATE {leases} h SET released_at = $4 FROM ended \
                   WHERE h.run_id = ended.id AND h.epoch = ended.epoch) \
                 SELECT run_key, cancelled, \
                   pg_notify($5, CASE WHEN cancelled THEN $7 || run_key ELSE $6 END) FROM ended",
                state =
                    or_cancelled("r.state").replace("cancel_requested_at", "r.cancel_requested_at"),
                no_progress = no_progress("r"),
            ),
            // $1 key, $2 now, $3 channel, $4 payload if cancelled now. One
            // statement under the row's lock: a run leased by a live worker
            // gets the request; any other unfinished one is cancelled now.
            cancel: {
                let live =
                    "(state = 'incomplete' AND lease_owner IS NOT NULL AND lease_expires_at > $2)";
                format!(
                    "WITH cancelled AS (\
                       UPDATE {runs} SET cancel_requested_at = COALESCE(cancel_requested_at, $2), \
                         state = CASE WHEN {live} THEN state ELSE 'cancelled' END, \
                         outcome = CASE WHEN {live} THEN outcome END, \
                         epoch = CASE WHEN {live} THEN epoch ELSE epoch + 1 END, \
                         lease_owner = CASE WHEN {live} THEN lease_owner END, \
                         lease_expires_at = CASE WHEN {live} THEN lease_expires_at END, \
                         lease_token = CASE WHEN {live} THEN lease_token END, updated_at = $2 \
                       WHERE run_key = $1 AND state IN ('incomplete', 'dead_lettered') \
                         AND NOT ({live} AND cancel_requested_at IS NOT NULL) \
                       RETURNING state) \
                     SELECT (SELECT count(*) FROM cancelled), \
                       (SELECT count(*) FROM (SELECT pg_notify($3, $4) FROM cancelled \
                         WHERE state = 'cancelled') AS notified)"
                )
            },
            // $1 key, $2 now, $3 channel, $4 payload. The steps that failed
            // for good after the last completed one run again.
            resume: format!(
                "WITH resumed AS (\
                   UPDATE {runs} SET state = 'incomplete', outcome = NULL, cancel_requested_at = NULL, \
                     deadline = NULL, failures = 0, wake_at = $2, resumed_at = $2, updated_at = $2 \
                   WHERE run_key = $1 AND state IN ('failed', 'cancelled', 'deadline_exceeded', 'dead_lettered') \
                   RETURNING id), \
                 forgotten AS (DELETE FROM {steps} WHERE run_id = (SELECT id FROM resumed) \
                   AND state = 'failed' AND seq > COALESCE((SELECT max(seq) FROM {steps} \
                     WHERE run_id = (SELECT id FROM resumed) AND state = 'completed'), -1)) \
                 SELECT count(*) FROM (SELECT pg_notify($3, $4) FROM resumed) AS notified"
            ),
            // $1 key, $2 now, $3 channel, $4 payload.
            retry_now: format!(
                "WITH due AS (\
                   UPDATE {runs} SET wake_at = $2, updated_at = $2 \
                   WHERE run_key = $1 AND state = 'incomplete' \
                     AND NOT (lease_owner IS NOT NULL AND lease_expires_at > $2) \
                   RETURNING id), \
                 steps AS (UPDATE {steps} SET retry_at = NULL \
                   WHERE run_id = (SELECT id FROM due) AND state = 'retrying') \
                 SELECT count(*) FROM (SELECT pg_notify($3, $4) FROM due) AS notified"
            ),
            // $1 source, $2 new key, $3 steps below this seq, $4 now, $5 channel, $6 payload.
            fork: format!(
                "WITH forked AS (\
                   INSERT INTO {runs} (run_key, workflow, fingerprint, input, state, epoch, wake_at, \
                     executions, created_at, updated_at, forked_from) \
                   SELECT $2, workflow, 0, input, 'incomplete', 0, $4, 0, $4, $4, run_key \
                   FROM {runs} WHERE run_key = $1 \
                   ON CONFLICT (run_key) DO NOTHING RETURNING id), \
                 copied AS (\
                   INSERT INTO {steps} (run_id, step_id, seq, state, output, attempts, last_error, \
                     epoch, started_at, updated_at) \
                   SELECT forked.id, step_id, seq, state, output, attempts, last_error, 0, started_at, \
                     updated_at \
                   FROM {steps} CROSS JOIN forked WHERE run_id = {run_id} \
                     AND state IN ('completed', 'failed') AND seq < $3) \
                 SELECT count(*) FROM (SELECT pg_notify($5, $6) FROM forked) AS notified"
            ),
            // $1 before, $2 limit. Skips runs another purge holds.
            purge: format!(
                "WITH doomed AS (\
                   SELECT id FROM {runs} WHERE state IN {FINISHED} AND updated_at < $1 \
                   ORDER BY updated_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 steps AS (DELETE FROM {steps} \
                   WHERE run_id = ANY (ARRAY(SELECT id FROM doomed))), \
                 leases AS (DELETE FROM {leases} \
                   WHERE run_id = ANY (ARRAY(SELECT id FROM doomed))), \
                 events AS (DELETE FROM {events} \
                   WHERE run_id = ANY (ARRAY(SELECT id FROM doomed))), \
                 messages AS (DELETE FROM {messages} \
                   WHERE run_id = ANY (ARRAY(SELECT id FROM doomed))), \
                 runs AS (DELETE FROM {runs} WHERE id IN (SELECT id FROM doomed) RETURNING 1) \
                 SELECT count(*) FROM runs"
            ),
            released_at: format!(
                "SELECT released_at FROM {leases} WHERE run_id = {run_id} AND epoch = $2"
            ),
            // $1 now, $2 owner, $3 until, $4 token, $5 limit, $6 the
            // workflows it may take (NULL: any).
            // A due run at the last epoch cannot be leased: it is set aside
            // (dead-lettered, with an error naming it) in the same statement,
            // and left out of what the claim returns.
            claim: {
                let last = "r.epoch = 9223372036854775807";
                format!(
                    "WITH due AS (\
                       SELECT id FROM {runs} \
                       WHERE state = 'incomplete' AND wake_at <= $1 AND (lease_owner IS NULL \
                         OR lease_expires_at IS NULL OR lease_expires_at <= $1) \
                         AND ($6::text[] IS NULL OR workflow = ANY ($6::text[])) \
                       ORDER BY wake_at, id LIMIT $5 FOR UPDATE SKIP LOCKED), \
                     taken AS (\
                       UPDATE {runs} r SET \
                         epoch = CASE WHEN {last} THEN r.epoch ELSE r.epoch + 1 END, \
                         state = CASE WHEN {last} THEN 'dead_lettered' ELSE r.state END, \
                         last_error = CASE WHEN {last} THEN 'run ' || quote_literal(r.run_key) \
                           || ' cannot be leased: it is at the last epoch' ELSE r.last_error END, \
                         executions = LEAST(r.executions, 2147483646) + 1, \
                         lease_owner = CASE WHEN {last} THEN NULL ELSE $2::text END, \
                         failures = LEAST(r.failures, 2147483646) + {taken_over}, \
                         lease_expires_at = CASE WHEN {last} THEN NULL ELSE $3::bigint END, \
                         lease_token = CASE WHEN {last} THEN NULL ELSE $4::bigint END, \
                         updated_at = $1 \
                       FROM due WHERE r.id = due.id RETURNING r.id, {r_run}), \
                     {} \
                     SELECT {run} FROM taken WHERE state = 'incomplete' ORDER BY wake_at, id",
                    log_lease("taken")
                )
            },
            select_run: format!("SELECT {run} FROM {runs} WHERE run_key = $1"),
            select_steps: format!(
                "SELECT {STEP_COLUMNS} FROM {steps} WHERE run_id = {run_id} \
                 ORDER BY seq NULLS LAST, step_id"
            ),
            // The claimed keys are joined, one index lookup each, rather than
            // matched with `= ANY`: a plan that does not depend on the
            // table's statistics (with stale ones, `= ANY` was seen to scan
            // every step of a million runs). `OFFSET 0` keeps the planner
            // from flattening the lookup into a hash join over all steps,
            // which a generic plan chose without statistics.
            select_steps_of: format!(
                "SELECT k.run_key, {s_steps} FROM unnest($1::text[]) AS k(run_key) \
                 CROSS JOIN LATERAL (SELECT id FROM {runs} WHERE run_key = k.run_key OFFSET 0) AS r \
                 CROSS JOIN LATERAL (SELECT * FROM {steps} WHERE run_id = r.id OFFSET 0) AS s \
                 ORDER BY k.run_key, s.seq NULLS LAST, s.step_id",
                s_steps = STEP_COLUMNS
                    .split(", ")
                    .map(|c| format!("s.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            select_step: format!(
                "SELECT state, epoch, output FROM {steps} WHERE run_id = {run_id} AND step_id = $2"
            ),
            // $1 key, $2 epoch, $3 step, $4 seq, $5 state, $6 output,
            // $7 attempts, $8 started_at, $9 at, $10 error, $11 even if a
            // cancel is requested.
            step_recorded: format!(
                "INSERT INTO {steps} AS s (run_id, step_id, seq, state, output, attempts, epoch, \
                   started_at, updated_at, last_error) \
                 SELECT id, $3::text, $4::bigint, $5::text, $6::bytea, $7::integer, $2::bigint, \
                   $8::bigint, $9::bigint, $10::text FROM {runs} WHERE {current} \
                   AND (cancel_requested_at IS NULL OR $11::bool) FOR UPDATE \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET seq = excluded.seq, \
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
                   SELECT id, run_key, epoch FROM {runs} \
                   WHERE run_key = ANY($1::text[]) AND state = 'incomplete' \
                     AND lease_owner IS NOT NULL AND cancel_requested_at IS NULL \
                   ORDER BY run_key FOR UPDATE), \
                 written AS (\
                 INSERT INTO {steps} AS s (run_id, step_id, seq, state, output, attempts, epoch, \
                   started_at, updated_at, last_error) \
                 SELECT f.id, b.step_id, b.seq, b.state, b.output, b.attempts, b.epoch, \
                   b.started_at, b.updated_at, b.last_error \
                 FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], \
                   $6::bytea[], $7::integer[], $8::bigint[], $9::bigint[], $10::text[]) \
                   AS b(run_key, epoch, step_id, seq, state, output, attempts, started_at, \
                     updated_at, last_error) \
                 JOIN fence f ON f.run_key = b.run_key AND f.epoch = b.epoch \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET seq = excluded.seq, \
                   state = excluded.state, output = excluded.output, attempts = excluded.attempts, \
                   retry_at = NULL, last_error = COALESCE(excluded.last_error, s.last_error), \
                   epoch = excluded.epoch, started_at = excluded.started_at, \
                   updated_at = excluded.updated_at \
                 WHERE s.state = 'retrying' RETURNING s.run_id, s.step_id) \
                 SELECT f.run_key, w.step_id FROM written w JOIN fence f ON f.id = w.run_id"
            ),
            // $1 key, $2 epoch, $3 step, $4 attempts, $5 error, $6 retry_at,
            // $7 started_at, $8 at, $9 even if a cancel is requested.
            attempt_failed: format!(
                "INSERT INTO {steps} AS s (run_id, step_id, state, attempts, last_error, retry_at, \
                   epoch, started_at, updated_at) \
                 SELECT id, $3::text, 'retrying', $4::integer, $5::text, $6::bigint, $2::bigint, \
                   $7::bigint, $8::bigint FROM {runs} WHERE {current} \
                   AND (cancel_requested_at IS NULL OR $9::bool) FOR UPDATE \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET seq = NULL, state = excluded.state, \
                   output = NULL, attempts = excluded.attempts, last_error = excluded.last_error, \
                   retry_at = excluded.retry_at, epoch = excluded.epoch, \
                   started_at = excluded.started_at, updated_at = excluded.updated_at \
                 WHERE s.state = 'retrying' RETURNING 1"
            ),
            // $1 key, $2 epoch, $3 at, $4 channel, $5 payload, $6 if
            // cancelled, $7 state, $8 outcome.
            run_finished: end_lease(&format!(
                "state = {}, outcome = CASE WHEN cancel_requested_at IS NULL THEN $8::bytea END, \
                 last_error = CASE WHEN cancel_requested_at IS NULL AND $7 = 'completed' THEN NULL \
                   ELSE last_error END",
                or_cancelled("$7::text")
            )),
            // $1 key, $2 epoch, $3 at, $4 channel, $5 payload, $6 if
            // cancelled, $7 last_error, $8 wake_at, $9 failures.
            // $10: the messages a receive saw sent, if it waits for one;
            // due now if more were sent since.
            release: end_lease(&format!(
                "state = {}, last_error = $7, failures = $9::integer, \
                 wake_at = CASE WHEN $10::bigint IS NOT NULL AND messages_sent > $10::bigint \
                   THEN $3::bigint ELSE $8::bigint END, \
                 awaits_message = ($10::bigint IS NOT NULL AND messages_sent <= $10::bigint)",
                or_cancelled("state")
            )),
            // $1 key, $2 epoch, $3 fingerprint, $4 at.
            pin: format!(
                "UPDATE {runs} SET fingerprint = CASE WHEN fingerprint = 0 THEN $3 ELSE fingerprint END, \
                 updated_at = $4 WHERE {current} RETURNING cancel_requested_at IS NOT NULL"
            ),
            // $1 key, $2 epoch, $3 until.
            renew: format!(
                "WITH renewed AS (\
                   UPDATE {runs} SET lease_expires_at = $3 \
                   WHERE {current} RETURNING id), \
                 logged AS (UPDATE {leases} SET expires_at = $3 \
                   WHERE run_id = (SELECT id FROM renewed) AND epoch = $2) \
                 SELECT count(*) FROM renewed"
            ),
            lease_history: format!(
                "SELECT epoch, owner, acquired_at, expires_at, released_at FROM {leases} \
                 WHERE run_id = {run_id} ORDER BY epoch"
            ),
            schema: s,
        }
    }

    /// `list_runs` with only the filter's conditions, so that a workflow
    /// filter can use its index; the state is a literal from a fixed list,
    /// so that partial indexes apply. Parameters are numbered in the order
    /// workflow, lease owner, created before, created after, after key,
    /// limit, skipping absent ones.
    pub(super) fn list_runs(&self, filter: &super::RunFilter) -> String {
        let runs = format!("{}.resumable_runs", self.schema);
        let mut sql = format!("SELECT {} FROM {runs} WHERE true", columns(""));
        if let Some(state) = filter.state {
            sql.push_str(&format!(" AND state = '{}'", state.as_str()));
        }
        if filter.leased {
            sql.push_str(" AND lease_owner IS NOT NULL");
        }
        let mut n = 0;
        for (present, condition) in [
            (filter.parent.is_some(), "parent = $"),
            (filter.workflow.is_some(), "workflow = $"),
            (filter.lease_owner.is_some(), "lease_owner = $"),
            (filter.created_before.is_some(), "created_at < $"),
            (filter.created_after.is_some(), "created_at >= $"),
            (
                filter.after.is_some(),
                "id > COALESCE((SELECT id FROM {runs} WHERE run_key = $",
            ),
        ] {
            if present {
                n += 1;
                let condition = condition.replace("{runs}", &runs);
                let close = if condition.ends_with("run_key = $") {
                    "), 9223372036854775807)"
                } else {
                    ""
                };
                sql.push_str(&format!(" AND {condition}{n}{close}"));
            }
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", n + 1));
        sql
    }
}
