"""RL against a reward model: ReFL, GRPO, Best-of-N, search, and the reward-hacking monitor.

rl/ receives reward functions and ground-truth metrics as callables; it never imports world/.
The recipes that wire them: `rewarddance rl refl` (recipes/refl.py), `rewarddance rl best-of-n`
and `rewarddance rl search` (recipes/search.py).
"""

from .monitor import ALARMS, HackingMonitor, MonitorConfig, diversity, plot_monitor, replay
from .refl import REWARD_LOSSES, ReFLOutput, refl_forward, reward_to_loss
from .search import SearchResult, best_of_n, search_over_paths

__all__ = ["ALARMS", "REWARD_LOSSES", "HackingMonitor", "MonitorConfig", "ReFLOutput", "SearchResult", "best_of_n",
           "diversity", "plot_monitor", "refl_forward", "replay", "reward_to_loss", "search_over_paths"]
