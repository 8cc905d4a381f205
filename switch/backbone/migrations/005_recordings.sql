-- A recorded call's recording: location, format, bytes, duration_s, sha256.
ALTER TABLE calls ADD COLUMN recording jsonb;
