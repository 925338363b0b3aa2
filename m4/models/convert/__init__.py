"""Converts reference 4M checkpoints (apple/ml-4m, safetensors) to m4, and back.

    from m4.models import convert
    model, plan = convert.convert_checkpoint("model.safetensors", out=DIR)
    report = convert.check(model, plan, "tests/fixtures/ml4m_tiny")

The parts, in the order a conversion runs: source (read the safetensors and
the reference config), planning (the m4 config and modality names), tensor_map
(reference tensors <-> m4 parameters), state (to_m4, to_reference,
convert_checkpoint), parity (compare with a saved reference run). The command
line is m4.tools.convert_4m.
"""

# pylint: disable=g-importing-member,unused-import
from m4.models.convert.parity import LOGIT_TOL, LOSS_TOL, check, loss_tol, reference_batch
from m4.models.convert.planning import (ConversionError, Plan, plan, plan_from_saved,
                                        register)
from m4.models.convert.source import read_source
from m4.models.convert.state import BUFFER_ATOL, convert_checkpoint, to_m4, to_reference
from m4.models.convert.tensor_map import Rule, rules
