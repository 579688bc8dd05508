"""training/: composes pipeline/ and selection/ into an Accelerate-driven distillation run.

config (typed YAML) · models (timm / tv/ torchvision) · build (config → the Run the loop steps) · trainer (the
loop) · step (one step's phases) · losses (KD, mixed CE) · cost / budget / wallclock (FLOP counting, cost model,
ledger; k for a FLOP or a wall-clock budget) · optim (SGD + schedule) · checkpoint (atomic save/resume) · evaluate
(top-1/5) · recipes / compare (teacher-if-missing, method comparison). The commands that measure or report
(bench, profile, cost, report) live in measure/.
"""

from .config import Config, ConfigError, load_config
from .models import ModelError, create_model

__all__ = ["Config", "ConfigError", "ModelError", "create_model", "load_config"]
