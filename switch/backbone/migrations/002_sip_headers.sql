-- The X- headers of the call's INVITE (carrier or dialer metadata), as a JSON object.
ALTER TABLE calls ADD COLUMN sip_headers jsonb NOT NULL DEFAULT '{}';
