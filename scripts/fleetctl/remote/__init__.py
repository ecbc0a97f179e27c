"""Remote access to the fleet: SSH to its hosts (Fabric) and Celery control through its broker."""
