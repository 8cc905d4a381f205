-- Trunks and routes, shared by every node (the API writes, each node reloads).
CREATE TABLE trunks (
    name       text PRIMARY KEY,
    config     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE routes (
    kind       text NOT NULL CHECK (kind IN ('outbound', 'inbound')),
    name       text NOT NULL,
    config     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
