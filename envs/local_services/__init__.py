"""A local-services (POI) database and a text-to-SQL task generator over it."""

from envs.local_services.database import DB_ID, DatabaseInfo, build_database, content_hash, database_path
from envs.local_services.questions import SLICES, HeldoutSizes, TaskSplit, generate_split, generate_tasks

__all__ = ["DB_ID", "SLICES", "DatabaseInfo", "HeldoutSizes", "TaskSplit", "build_database", "content_hash",
           "database_path", "generate_split", "generate_tasks"]
