"""Every SQL statement the PostgreSQL store sends, and nothing else.

The store's modules (:mod:`.pg_db`, :mod:`.postgres`, :mod:`.pg_batches`,
:mod:`.pg_results`) execute these constants by name and hold no SQL text of their
own; ``tests/unit/test_pg_sql.py`` fails if one does. Each statement is fixed
text: every value travels as a parameter (``%s`` or ``%(name)s``, passed to
``execute`` separately) and none is ever formatted in, so a name, a key or a
record is data to the server, never SQL. No table or column name is chosen at run
time either: where a statement depends on a kind of record, each kind has its own
statement (:data:`MOVE_ASIDE`).

The texts are the ones the store has always sent, whitespace included: the
schema's function body is stored in the database as written.

Grouped by concern: the session, the schema and its migrations, advisory locks,
runs, batches, records moved aside, shared results.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "ADD_RUNS_SLOT",
    "ADVISORY_LOCK",
    "ADVISORY_TRY_LOCK",
    "ADVISORY_UNLOCK",
    "ADVISORY_XACT_LOCK",
    "ALLOW_EVENTS_PART",
    "CHECK_GUARDS",
    "CREATE_BATCHES",
    "CREATE_CORRUPT",
    "CREATE_DURATIONS",
    "CREATE_LINE",
    "CREATE_OUTCOMES",
    "CREATE_QUARANTINE",
    "CREATE_RESULT_CHUNKS",
    "CREATE_RESULT_PARTS",
    "CREATE_RUNS",
    "CREATE_RUNS_BATCH_INDEX",
    "CREATE_RUNS_COMPLETED_INDEX",
    "CREATE_RUNS_CREATED_INDEX",
    "CREATE_RUNS_FINAL_FUNCTION",
    "CREATE_RUNS_FINAL_TRIGGER",
    "CREATE_RUNS_LIVE_SLOT_INDEX",
    "CREATE_RUNS_ONE_LIVE_INDEX",
    "CREATE_SCHEMA_TABLE",
    "DELETE_QUARANTINED",
    "DELETE_RESULT_CHUNKS",
    "DELETE_RESULT_PARTS",
    "DELETE_RUN",
    "DELETE_STALE_OUTCOMES",
    "DELETE_STALE_TICKETS",
    "DELETE_TICKET",
    "DROP_RUNS_ONE_LIVE_INDEX",
    "INSERT_BATCH_IF_NEW",
    "INSERT_LIVE_RUN_IF_FREE",
    "INSERT_OUTCOME",
    "INSERT_QUARANTINED",
    "INSERT_RESULT_CHUNK",
    "INSERT_RESULT_PART",
    "INSERT_RUN",
    "INSERT_RUN_IF_NEW",
    "INSERT_SCHEMA",
    "MIGRATIONS",
    "MOVE_ASIDE",
    "MOVE_BATCH_ASIDE",
    "MOVE_RUN_ASIDE",
    "PRUNE_OUTCOMES",
    "SELECT_BATCH",
    "SELECT_BATCHES",
    "SELECT_BATCHES_BY_ID",
    "SELECT_BATCH_FOR_UPDATE",
    "SELECT_DURATIONS",
    "SELECT_KNOWN_RUN_IDS",
    "SELECT_LAST_COMPLETED",
    "SELECT_LINE",
    "SELECT_LIVE_ON_MACHINES",
    "SELECT_OUTCOMES",
    "SELECT_OUTCOMES_OF_KEY",
    "SELECT_PRUNABLE",
    "SELECT_QUARANTINED",
    "SELECT_QUARANTINED_ONE",
    "SELECT_RESULT_CHUNK",
    "SELECT_RESULT_PARTS",
    "SELECT_RUN",
    "SELECT_RUNS",
    "SELECT_RUNS_BY_ID",
    "SELECT_RUN_FOR_UPDATE",
    "SELECT_RUN_STATUSES",
    "SELECT_RUN_STATUS_FOR_UPDATE",
    "SELECT_SCHEMA",
    "SELECT_SESSION",
    "SELECT_SESSION_START",
    "SET_CONFIG",
    "SET_SCHEMA_VERSION",
    "SNAPSHOT",
    "UPDATE_BATCH",
    "UPDATE_RUN",
    "UPSERT_DURATION",
    "UPSERT_TICKET",
]

# -- the session ----------------------------------------------------------------------

#: Set this session's ``lock_timeout``; parameter: the timeout as text (``'0'``: none, ``'250ms'``).
#: A setting of this session: its name, then its value.
SET_CONFIG = "SELECT set_config(%s, %s, false)"

#: This session's identity: its pid and its start in microseconds since the epoch.
SELECT_SESSION = (
    "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity"
    " WHERE pid = pg_backend_pid()"
)

#: The start (microseconds since the epoch) of the session with pid ``%s``; no row once it is gone.
SELECT_SESSION_START = (
    "SELECT (extract(epoch FROM backend_start) * 1000000)::bigint FROM pg_stat_activity WHERE pid = %s"
)

# -- the schema: its version table and its migrations ----------------------------------

#: The table of the schema's version and the store's id, made if missing (under the migration lock).
CREATE_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS lrun_schema (version integer NOT NULL, store_id text NOT NULL)"
)

#: The stored schema version and store id (no row on a new database).
SELECT_SCHEMA = "SELECT version, store_id FROM lrun_schema"

#: The first row of ``lrun_schema``; parameters: version, store id.
INSERT_SCHEMA = "INSERT INTO lrun_schema (version, store_id) VALUES (%s, %s)"

#: Record the schema version reached; parameter: the version.
SET_SCHEMA_VERSION = "UPDATE lrun_schema SET version = %s"

#: A run: its record as JSON in ``record``, the fields that queries look at in columns.
CREATE_RUNS = """CREATE TABLE lrun_runs (
            id text PRIMARY KEY,
            machine text NOT NULL,
            key text NOT NULL,
            status text NOT NULL
                CHECK (status IN ('pending', 'running', 'completed', 'failed', 'interrupted', 'timeout')),
            batch_id text,
            created_at double precision,
            ended_at double precision,
            record text NOT NULL)"""

#: At most one live run per machine, whatever a client does.
CREATE_RUNS_ONE_LIVE_INDEX = """CREATE UNIQUE INDEX lrun_runs_one_live ON lrun_runs (machine)
            WHERE status IN ('pending', 'running')"""

#: The newest completed run of a key on a machine, in one index lookup.
CREATE_RUNS_COMPLETED_INDEX = (
    "CREATE INDEX lrun_runs_completed ON lrun_runs (machine, key, ended_at) WHERE status = 'completed'"
)

#: Runs oldest first.
CREATE_RUNS_CREATED_INDEX = "CREATE INDEX lrun_runs_created ON lrun_runs (created_at, id)"

#: A batch's runs.
CREATE_RUNS_BATCH_INDEX = "CREATE INDEX lrun_runs_batch ON lrun_runs (batch_id)"

#: The trigger function that refuses any change to a terminal run (error code ``LR001``).
#: Its ``%`` are PL/pgSQL's own ``RAISE`` placeholders: the statement is sent without parameters.
CREATE_RUNS_FINAL_FUNCTION = """CREATE FUNCTION lrun_runs_final() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'run % is %: a terminal run is final', OLD.id, OLD.status
                USING ERRCODE = 'LR001';
        END $$"""

#: A terminal record is final, whatever a client does.
CREATE_RUNS_FINAL_TRIGGER = """CREATE TRIGGER lrun_runs_final BEFORE UPDATE ON lrun_runs FOR EACH ROW
            WHEN (OLD.status NOT IN ('pending', 'running')) EXECUTE FUNCTION lrun_runs_final()"""

#: A batch: its whole record as JSON.
CREATE_BATCHES = """CREATE TABLE lrun_batches (
            id text PRIMARY KEY, created_at double precision NOT NULL, record text NOT NULL)"""

#: Records that did not parse, kept (never deleted) with the reason.
CREATE_CORRUPT = """CREATE TABLE lrun_corrupt (
            kind text NOT NULL, id text NOT NULL, record text NOT NULL, reason text NOT NULL,
            moved_at timestamptz NOT NULL DEFAULT now())"""

#: A shared result part's bytes, one chunk per row (see :mod:`.pg_results`).
CREATE_RESULT_CHUNKS = """CREATE TABLE lrun_result_chunks (
        run_id text NOT NULL REFERENCES lrun_runs (id) ON DELETE CASCADE,
        part text NOT NULL,
        seq integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (run_id, part, seq))"""

#: A shared result part: its size, chunk count and digest (written after its chunks).
CREATE_RESULT_PARTS = """CREATE TABLE lrun_result_parts (
        run_id text NOT NULL REFERENCES lrun_runs (id) ON DELETE CASCADE,
        part text NOT NULL CHECK (part IN ('junit', 'logs', 'artifacts')),
        size bigint NOT NULL,
        chunks integer NOT NULL,
        digest text NOT NULL,
        PRIMARY KEY (run_id, part))"""

#: Version 2: a run's events file (``events``) is a shared result part too.
ALLOW_EVENTS_PART = """ALTER TABLE lrun_result_parts
        DROP CONSTRAINT lrun_result_parts_part_check,
        ADD CONSTRAINT lrun_result_parts_part_check
            CHECK (part IN ('junit', 'logs', 'events', 'artifacts'))"""

#: Slots: a machine runs up to N runs at once, each in its own slot (0 .. N-1); the index
#: keeps two live runs out of one slot, whatever a client does.
ADD_RUNS_SLOT = "ALTER TABLE lrun_runs ADD COLUMN slot integer NOT NULL DEFAULT 0"
DROP_RUNS_ONE_LIVE_INDEX = "DROP INDEX lrun_runs_one_live"
CREATE_RUNS_LIVE_SLOT_INDEX = """CREATE UNIQUE INDEX lrun_runs_live_slot ON lrun_runs (machine, slot)
            WHERE status IN ('pending', 'running')"""

#: The inner tests' durations of each directory (``suite``), for shards balanced by duration.
CREATE_DURATIONS = """CREATE TABLE lrun_durations (
            suite text NOT NULL,
            nodeid text NOT NULL,
            seconds double precision NOT NULL,
            PRIMARY KEY (suite, nodeid))"""

#: Waiters in line for a slot of a machine: the oldest ticket still seen gets the next free slot.
CREATE_LINE = """CREATE TABLE lrun_line (
            machine text NOT NULL,
            ticket text NOT NULL,
            created double precision NOT NULL,
            seen double precision NOT NULL,
            PRIMARY KEY (machine, ticket))"""

#: Each inner test's outcome (passed, failed) per run, under the run's key: two runs of one key
#: that disagree prove the test flaky (``lrun flaky``, see :mod:`.outcomes`).
CREATE_OUTCOMES = """CREATE TABLE lrun_outcomes (
            key text NOT NULL,
            suite text NOT NULL,
            nodeid text NOT NULL,
            run_id text NOT NULL,
            machine text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('passed', 'failed')),
            at double precision NOT NULL,
            PRIMARY KEY (key, suite, nodeid, run_id))"""

#: The quarantine list: tests whose failures --lrun-quarantine=store reports as xfail.
CREATE_QUARANTINE = """CREATE TABLE lrun_quarantine (
            nodeid text PRIMARY KEY,
            since double precision NOT NULL)"""

#: The statements that take the schema from version ``n - 1`` to ``n``, in order.
MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    1: (
        CREATE_RUNS,
        CREATE_RUNS_ONE_LIVE_INDEX,
        CREATE_RUNS_COMPLETED_INDEX,
        CREATE_RUNS_CREATED_INDEX,
        CREATE_RUNS_BATCH_INDEX,
        CREATE_RUNS_FINAL_FUNCTION,
        CREATE_RUNS_FINAL_TRIGGER,
        CREATE_BATCHES,
        CREATE_CORRUPT,
        CREATE_RESULT_CHUNKS,
        CREATE_RESULT_PARTS,
    ),
    2: (ALLOW_EVENTS_PART,),
    3: (ADD_RUNS_SLOT, DROP_RUNS_ONE_LIVE_INDEX, CREATE_RUNS_LIVE_SLOT_INDEX),
    4: (CREATE_DURATIONS,),
    5: (CREATE_LINE,),
    # No table changes: batch records may now hold the status "incomplete" and a "collected" list,
    # which older code would read as corrupt and move aside; it refuses a version-6 store instead.
    6: (),
    7: (CREATE_OUTCOMES, CREATE_QUARANTINE),
}

# -- advisory locks (parameter: the lock's bigint, see pg_db.lock_id) ------------------

#: Wait for a lock held until the transaction ends (the schema's, a machine's).
ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock(%s)"

#: Wait for a lock held until unlocked or the session ends (a run's watch lock).
ADVISORY_LOCK = "SELECT pg_advisory_lock(%s)"

#: Take a session lock if free; one row: whether it was taken.
ADVISORY_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"

#: Release a session lock; one row: whether it was held.
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%s)"

# -- runs (lrun_runs) -----------------------------------------------------------------

#: A new run; parameters: the columns by name (``id``, ``machine``, ``key``, ``status``,
#: ``batch``, ``created``, ``ended``, ``record``, ``slot``).
INSERT_RUN = """INSERT INTO lrun_runs (id, machine, key, status, batch_id, created_at, ended_at, record, slot)
    VALUES (%(id)s, %(machine)s, %(key)s, %(status)s, %(batch)s, %(created)s, %(ended)s, %(record)s,
        %(slot)s)"""

#: :data:`INSERT_RUN` unless the id exists; one row (the id) when inserted.
INSERT_RUN_IF_NEW = INSERT_RUN + " ON CONFLICT (id) DO NOTHING RETURNING id"

#: :data:`INSERT_RUN` of a live run unless its slot of its machine is taken (the live-slot
#: index arbitrates between racing runners); one row (the id) when inserted.
INSERT_LIVE_RUN_IF_FREE = (
    INSERT_RUN + " ON CONFLICT (machine, slot) WHERE status IN ('pending', 'running') DO NOTHING RETURNING id"
)

#: The live runs of the machines in the array ``%s`` (id, machine, key, slot, record), oldest first.
SELECT_LIVE_ON_MACHINES = (
    "SELECT id, machine, key, slot, record FROM lrun_runs"
    " WHERE machine = ANY(%s) AND status IN ('pending', 'running') ORDER BY created_at, id"
)

#: The record of run ``%s``.
SELECT_RUN = "SELECT record FROM lrun_runs WHERE id = %s"

#: Lock run ``%s``'s row for an update; its machine, key and status.
SELECT_RUN_FOR_UPDATE = "SELECT machine, key, status FROM lrun_runs WHERE id = %s FOR UPDATE"

#: Rewrite a live run; parameters as :data:`INSERT_RUN`'s (``machine`` and ``key`` unused).
UPDATE_RUN = (
    "UPDATE lrun_runs SET status = %(status)s, batch_id = %(batch)s, created_at = %(created)s,"
    " ended_at = %(ended)s, record = %(record)s WHERE id = %(id)s"
)

#: The newest completed run (id, record) of machine and key ``%s, %s``.
SELECT_LAST_COMPLETED = (
    "SELECT id, record FROM lrun_runs WHERE machine = %s AND key = %s AND status = 'completed'"
    " ORDER BY ended_at DESC NULLS LAST, id DESC LIMIT 1"
)

#: Runs (id, record) oldest first, filtered: ``machine``, ``status``, ``batch`` (NULL: any)
#: and ``live`` (true: pending and running runs only).
SELECT_RUNS = """SELECT id, record FROM lrun_runs
    WHERE (%(machine)s::text IS NULL OR machine = %(machine)s)
      AND (%(status)s::text IS NULL OR status = %(status)s)
      AND (%(batch)s::text IS NULL OR batch_id = %(batch)s)
      AND (NOT %(live)s OR status IN ('pending', 'running'))
    ORDER BY COALESCE(created_at, 0), id"""

#: Lock run ``%s``'s row before deleting it; its status.
SELECT_RUN_STATUS_FOR_UPDATE = "SELECT status FROM lrun_runs WHERE id = %s FOR UPDATE"

#: Delete run ``%s`` (its shared result goes with it, by the foreign keys' cascade).
DELETE_RUN = "DELETE FROM lrun_runs WHERE id = %s"

#: Terminal runs with saved results (id, total bytes), the first to prune first.
SELECT_PRUNABLE = (
    "SELECT r.id, sum(p.size) FROM lrun_runs r JOIN lrun_result_parts p ON p.run_id = r.id"
    " WHERE r.status NOT IN ('pending', 'running')"
    " GROUP BY r.id, r.ended_at ORDER BY r.ended_at NULLS FIRST, r.id"
)

#: Which of the run ids in the array ``%s`` exist.
SELECT_KNOWN_RUN_IDS = "SELECT id FROM lrun_runs WHERE id = ANY(%s)"

#: The status of each run of the array ``%s`` that exists (id, status).
SELECT_RUN_STATUSES = "SELECT id, status FROM lrun_runs WHERE id = ANY(%s)"

#: Whether the database's guards exist: the live-slot index, the final-record trigger.
CHECK_GUARDS = (
    "SELECT to_regclass('lrun_runs_live_slot') IS NOT NULL,"
    " EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'lrun_runs_final' AND NOT tgisinternal)"
)

#: Every run's columns and record, for the store's check.
SELECT_RUNS_BY_ID = "SELECT id, machine, key, status, record FROM lrun_runs ORDER BY id"

# -- the line of waiters (lrun_line) ------------------------------------------------------

#: The tickets in line on the machines in the array ``%s`` seen after ``%s`` (machine, ticket, created).
SELECT_LINE = "SELECT machine, ticket, created FROM lrun_line WHERE machine = ANY(%s) AND seen > %s"

#: Put ticket ``%(ticket)s`` (created ``%(created)s``) in line on ``%(machine)s``, seen ``%(seen)s``.
UPSERT_TICKET = """INSERT INTO lrun_line (machine, ticket, created, seen)
    VALUES (%(machine)s, %(ticket)s, %(created)s, %(seen)s)
    ON CONFLICT (machine, ticket) DO UPDATE SET seen = EXCLUDED.seen"""

#: Take ticket ``%s`` out of line on the machines in the array ``%s``.
DELETE_TICKET = "DELETE FROM lrun_line WHERE ticket = %s AND machine = ANY(%s)"

#: Forget tickets not seen since ``%s`` (their waiters are gone).
DELETE_STALE_TICKETS = "DELETE FROM lrun_line WHERE seen <= %s"

# -- durations (lrun_durations) -------------------------------------------------------

#: Record one inner test's duration (``%s``: suite, node id, seconds); the newest wins.
UPSERT_DURATION = """INSERT INTO lrun_durations (suite, nodeid, seconds) VALUES (%s, %s, %s)
    ON CONFLICT (suite, nodeid) DO UPDATE SET seconds = EXCLUDED.seconds"""

#: The durations of suite ``%s`` (node id, seconds).
SELECT_DURATIONS = "SELECT nodeid, seconds FROM lrun_durations WHERE suite = %s"

# -- outcomes (lrun_outcomes) ---------------------------------------------------------

#: Record one inner test's outcome in one run (key, suite, node id, run id, machine, outcome, at).
INSERT_OUTCOME = """INSERT INTO lrun_outcomes (key, suite, nodeid, run_id, machine, outcome, at)
    VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"""

#: Keep only the newest ``%(kept)s`` outcomes per test under key ``%(key)s`` (what is read counts no more).
PRUNE_OUTCOMES = """DELETE FROM lrun_outcomes AS o USING (
        SELECT suite, nodeid, run_id, row_number() OVER (
            PARTITION BY suite, nodeid ORDER BY at DESC, run_id DESC) AS newer
        FROM lrun_outcomes WHERE key = %(key)s) AS r
    WHERE o.key = %(key)s AND o.suite = r.suite AND o.nodeid = r.nodeid AND o.run_id = r.run_id
        AND r.newer > %(kept)s"""

#: The outcomes kept under key ``%s``.
SELECT_OUTCOMES_OF_KEY = """SELECT key, suite, nodeid, run_id, machine, outcome, at FROM lrun_outcomes
    WHERE key = %s"""

#: Every outcome kept.
SELECT_OUTCOMES = "SELECT key, suite, nodeid, run_id, machine, outcome, at FROM lrun_outcomes"

#: Drop the outcomes of keys no run has any more; how many keys. Outcomes are saved only once
#: their run's record is in, so one statement's snapshot never takes those of a new key.
DELETE_STALE_OUTCOMES = """WITH gone AS (
        DELETE FROM lrun_outcomes AS o
        WHERE NOT EXISTS (SELECT 1 FROM lrun_runs AS r WHERE r.key = o.key)
        RETURNING o.key)
    SELECT count(DISTINCT key) FROM gone"""

#: Put node id ``%s`` on the quarantine list since ``%s`` (one there keeps its date).
INSERT_QUARANTINED = "INSERT INTO lrun_quarantine (nodeid, since) VALUES (%s, %s) ON CONFLICT DO NOTHING"

#: The entry of node id ``%s``.
SELECT_QUARANTINED_ONE = "SELECT nodeid, since FROM lrun_quarantine WHERE nodeid = %s"

#: Take node id ``%s`` off the list.
DELETE_QUARANTINED = "DELETE FROM lrun_quarantine WHERE nodeid = %s"

#: The whole list.
SELECT_QUARANTINED = "SELECT nodeid, since FROM lrun_quarantine ORDER BY nodeid"

# -- batches (lrun_batches) -----------------------------------------------------------

#: A new batch (id, created_at, record) unless the id exists; one row (the id) when inserted.
INSERT_BATCH_IF_NEW = (
    "INSERT INTO lrun_batches (id, created_at, record) VALUES (%s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)

#: The record of batch ``%s``.
SELECT_BATCH = "SELECT record FROM lrun_batches WHERE id = %s"

#: The record of batch ``%s``, its row locked until the transaction ends.
SELECT_BATCH_FOR_UPDATE = "SELECT record FROM lrun_batches WHERE id = %s FOR UPDATE"

#: Replace a batch's record; parameters: record, id.
UPDATE_BATCH = "UPDATE lrun_batches SET record = %s WHERE id = %s"

#: Every batch (id, record), oldest first.
SELECT_BATCHES = "SELECT id, record FROM lrun_batches ORDER BY created_at, id"

#: Every batch (id, record) by id, for the store's check.
SELECT_BATCHES_BY_ID = "SELECT id, record FROM lrun_batches ORDER BY id"

# -- records moved aside (lrun_corrupt) -------------------------------------------------
# Parameters: ``id``, ``record`` (the text that did not parse) and ``reason``. Nothing
# moves when someone rewrote the record meanwhile.

#: Move a run record that did not parse into ``lrun_corrupt``.
MOVE_RUN_ASIDE = """WITH gone AS (
            DELETE FROM lrun_runs WHERE id = %(id)s AND record = %(record)s RETURNING id, record)
        INSERT INTO lrun_corrupt (kind, id, record, reason) SELECT 'run', id, record, %(reason)s FROM gone"""

#: Move a batch record that did not parse into ``lrun_corrupt``.
MOVE_BATCH_ASIDE = """WITH gone AS (
            DELETE FROM lrun_batches WHERE id = %(id)s AND record = %(record)s RETURNING id, record)
        INSERT INTO lrun_corrupt (kind, id, record, reason)
        SELECT 'batch', id, record, %(reason)s FROM gone"""

#: The statement that moves a record of each kind aside.
MOVE_ASIDE: Mapping[str, str] = {"run": MOVE_RUN_ASIDE, "batch": MOVE_BATCH_ASIDE}

# -- shared results (lrun_result_parts, lrun_result_chunks; see pg_results) -------------

#: Forget run ``%s``'s stored parts (before its chunks, then store anew).
DELETE_RESULT_PARTS = "DELETE FROM lrun_result_parts WHERE run_id = %s"

#: Forget run ``%s``'s stored chunks.
DELETE_RESULT_CHUNKS = "DELETE FROM lrun_result_chunks WHERE run_id = %s"

#: One chunk; parameters: run id, part, seq, bytes.
INSERT_RESULT_CHUNK = "INSERT INTO lrun_result_chunks (run_id, part, seq, data) VALUES (%s, %s, %s, %s)"

#: A part whose chunks are all stored; parameters: run id, part, size, chunk count, digest.
INSERT_RESULT_PART = (
    "INSERT INTO lrun_result_parts (run_id, part, size, chunks, digest) VALUES (%s, %s, %s, %s, %s)"
)

#: One snapshot for the rest of the transaction (the first statement of a result's download).
SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"

#: Run ``%s``'s stored parts (part, size, chunks, digest).
SELECT_RESULT_PARTS = (
    "SELECT part, size, chunks, digest FROM lrun_result_parts WHERE run_id = %s ORDER BY part"
)

#: One chunk's bytes; parameters: run id, part, seq.
SELECT_RESULT_CHUNK = "SELECT data FROM lrun_result_chunks WHERE run_id = %s AND part = %s AND seq = %s"
