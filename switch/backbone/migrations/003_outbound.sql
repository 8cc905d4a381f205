-- Outbound calls: the API's metadata (per-number campaign variables) and the campaign.
ALTER TABLE calls ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE calls ADD COLUMN campaign_id text NOT NULL DEFAULT '';
CREATE INDEX calls_campaign_id ON calls (campaign_id) WHERE campaign_id <> '';
