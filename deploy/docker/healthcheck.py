"""The image's HEALTHCHECK: healthy while /health answers, 200 (taking calls) or 503
(draining: alive, finishing its calls); unhealthy when it does not answer."""

import sys
import urllib.error
import urllib.request

try:
    urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=2)
except urllib.error.HTTPError as error:
    sys.exit(0 if error.code == 503 else 1)
except OSError:
    sys.exit(1)
