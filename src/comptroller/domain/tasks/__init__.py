"""Task lifecycle rules (issue 17): states, a chain of command for assignment, heartbeats, and
"done" only with verified actions. Pure: the time and the task's actions are passed in.
"""

from comptroller.domain.tasks.chain import ChainOfCommand
from comptroller.domain.tasks.model import Task, TaskError, TaskRefusedError, TaskStatus

__all__ = ["ChainOfCommand", "Task", "TaskError", "TaskRefusedError", "TaskStatus"]
