from ssps_nni.cli.sweep import main
raise SystemExit(main())
