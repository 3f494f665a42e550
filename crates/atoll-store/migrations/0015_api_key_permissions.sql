-- What an API key may do (`POST /api/api-keys`): a JSON list of Daytona
-- permission names; NULL for keys with every permission (owner and admin
-- keys, and every key made before this migration).
ALTER TABLE api_keys ADD COLUMN permissions TEXT;
