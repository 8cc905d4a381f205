"""Call recordings past the call: their archive in S3-compatible storage."""
