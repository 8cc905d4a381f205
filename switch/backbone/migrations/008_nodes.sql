-- The nodes that served a call, in order: more than one when a node died mid-call and
-- another took the call over (node_id is the last of them).
ALTER TABLE calls ADD COLUMN nodes jsonb NOT NULL DEFAULT '[]';
