"""nlptl's pooled head, now nlptl/models/heads.py. This name stays for what imports it from here
(`from nlptl.heads import register`, as the README shows): it is the same module, not a copy."""

import sys

from nlptl.models import heads

sys.modules[__name__] = heads
