"""Protection: admission by measured load (overload control) and throttling of
abusive sources (rates, failed authentications, scanners, bans)."""
