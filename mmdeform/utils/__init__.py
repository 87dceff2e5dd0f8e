from .setup_env import register_all_modules
from .config_checks import check_dataset_paths, load_config
from .model_stats import count_parameters
from .version_check import check_versions

__all__ = ["register_all_modules", "check_versions", "check_dataset_paths", "count_parameters",
           "load_config"]
