"""Database backups with pgBackRest: ``sagews backup status`` (docs/backup.md)."""
