from ssps_nni.cli.search import main
raise SystemExit(main())
