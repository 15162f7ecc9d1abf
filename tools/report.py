from ssps_nni.cli.report import main
raise SystemExit(main())
