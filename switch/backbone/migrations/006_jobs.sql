-- The agent that talked on the call (its name on the node), for the reports.
ALTER TABLE calls ADD COLUMN agent text NOT NULL DEFAULT '';
CREATE INDEX calls_ended_at ON calls (ended_at);

-- Transcripts the batch job made from a recording, one per call and engine:
-- segments are [{channel: caller|agent, start_s, end_s, text}], in time order.
CREATE TABLE call_transcripts (
    call_id     text NOT NULL,
    engine      text NOT NULL,
    event_id    uuid NOT NULL UNIQUE,
    caller_text text NOT NULL DEFAULT '',
    agent_text  text NOT NULL DEFAULT '',
    segments    jsonb NOT NULL DEFAULT '[]',
    sha256      text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (call_id, engine)
);

-- The daily analytics job's output: one row per day, trunk, agent and disposition
-- (replaced whole each time the day is computed again).
CREATE TABLE daily_call_stats (
    day              date NOT NULL,
    trunk            text NOT NULL,
    agent            text NOT NULL,
    disposition      text NOT NULL,
    calls            integer NOT NULL,
    answered         integer NOT NULL,
    handle_s_avg     double precision,
    handle_s_total   double precision NOT NULL,
    turns            integer NOT NULL,
    turn_latency_p50 double precision,
    turn_latency_p95 double precision,
    transfers        integer NOT NULL,
    transfer_rate    double precision,
    barge_ins        integer NOT NULL,
    barge_in_rate    double precision,
    computed_at      timestamptz NOT NULL,
    PRIMARY KEY (day, trunk, agent, disposition)
);
