"""RL against a reward model: ReFL, GRPO, Best-of-N, search, and the reward-hacking monitor.

rl/ receives reward functions and ground-truth metrics as callables; it never imports world/.
"""

from .monitor import ALARMS, HackingMonitor, MonitorConfig, diversity, plot_monitor

__all__ = ["ALARMS", "HackingMonitor", "MonitorConfig", "diversity", "plot_monitor"]
