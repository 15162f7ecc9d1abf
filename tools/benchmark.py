from ssps_nni.cli.benchmark import main
raise SystemExit(main())
