"""Training jobs that cannot take the WebUI down: a queue of child processes, one folder per job.

    from dreamcore.jobs import JobManager
    manager = JobManager("jobs")
    manager.submit(config, "anna"); manager.list(); manager.get("anna"); manager.cancel("anna")

The REST API over it is ``dreamcore.jobs.api.create_router(manager)`` (needs fastapi, imported lazily).
"""

from __future__ import annotations

from dreamcore.jobs.folder import FINAL_STATUSES, JOB_STATUSES
from dreamcore.jobs.info import JobInfo
from dreamcore.jobs.manager import JobConflictError, JobError, JobManager, JobNotFoundError
from dreamcore.jobs.names import JobNameError, check_job_name

__all__ = ["JobManager", "JobInfo", "JobError", "JobNotFoundError", "JobConflictError", "JobNameError",
           "check_job_name", "JOB_STATUSES", "FINAL_STATUSES"]
