from ssps_nni.cli.train import main
raise SystemExit(main())
