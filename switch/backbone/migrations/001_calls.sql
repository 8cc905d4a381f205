-- Call records, one row per call, and the turns of its conversation. Analysts query
-- these tables: the column names are part of the product's interface (README).
CREATE TABLE calls (
    call_id          text PRIMARY KEY,
    direction        text NOT NULL,
    from_uri         text NOT NULL DEFAULT '',
    to_uri           text NOT NULL DEFAULT '',
    trunk            text NOT NULL DEFAULT '',
    node_id          text NOT NULL,
    offered_at       timestamptz NOT NULL,
    answered_at      timestamptz,
    ended_at         timestamptz,
    duration_s       double precision,
    disposition      text,
    sip_code         integer,
    reason           text,
    codec            text,
    dtmf             text,
    transfer_target  text,
    packets_sent     bigint,
    packets_received bigint,
    media            jsonb
);
CREATE INDEX calls_offered_at ON calls (offered_at);
CREATE INDEX calls_disposition ON calls (disposition);

CREATE TABLE call_turns (
    call_id           text NOT NULL,
    turn_index        integer NOT NULL,
    event_id          uuid NOT NULL UNIQUE,
    source            text NOT NULL,
    caller_text       text NOT NULL DEFAULT '',
    agent_text        text NOT NULL DEFAULT '',
    interrupted       boolean NOT NULL DEFAULT false,
    tools             jsonb NOT NULL DEFAULT '[]',
    latency_s         double precision,
    asr_s             double precision,
    llm_first_token_s double precision,
    tts_first_audio_s double precision,
    PRIMARY KEY (call_id, turn_index)
);

-- Every event as published, once: the idempotency key for redelivered events.
CREATE TABLE call_events (
    event_id   uuid PRIMARY KEY,
    call_id    text NOT NULL,
    type       text NOT NULL,
    ts         timestamptz NOT NULL,
    body       jsonb NOT NULL
);
CREATE INDEX call_events_call_id ON call_events (call_id, ts);
