-- What each turn answered from: the knowledge entries cited, the lookup's time, and
-- the knowledge base's outage when it could not answer.
ALTER TABLE call_turns ADD COLUMN knowledge jsonb NOT NULL DEFAULT '[]';
ALTER TABLE call_turns ADD COLUMN kb_s double precision;
ALTER TABLE call_turns ADD COLUMN knowledge_error text;
