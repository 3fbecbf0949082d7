"""The web UI's pages, one module per group (auth, projects, datasets, jobs, review, snapshots, training);
`app/ui/router.py` includes their routers. Handlers load, call services and render: no queries here."""
