"""``python -m lhs_federated`` runs the ``lhs-fed`` command."""

import sys

from lhs_federated.cli import main

sys.exit(main())
